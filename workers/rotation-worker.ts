// The rotation workers as their own process: consumes the schedule and rotation queues, and serves only the
// health probes on PORT. Run as many as needed; BullMQ spreads the jobs and the per-credential lease keeps
// each credential's downstream changes one at a time.
import { boot } from '../src/boot.ts';

await boot({ components: ['worker'] });
