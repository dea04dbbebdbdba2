// What Keyturn notifies about (KEYTURN_NOTIFY_EVENTS chooses among them). Each is an audit action: the notifier
// follows the audit stream and sends the events of these actions to the configured webhooks.
export const NOTIFICATION_EVENTS = [
  'rotation.succeeded',
  'rotation.failed',
  'credential.overdue',
  'rotation.upcoming',
  // Dual control skipped with X-Keyturn-Break-Glass (src/service/approvals.ts): an alert, whoever did it.
  'approval.break_glass',
] as const;
export type NotificationEvent = (typeof NOTIFICATION_EVENTS)[number];
