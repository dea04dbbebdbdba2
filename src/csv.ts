// RFC 4180 CSV: fields separated by commas, records by CRLF; a field holding a comma, a quote, CR or LF is
// enclosed in quotes, with its quotes doubled. Nothing else is changed, so a reader gets back the exact values.
export type CsvValue = string | number | boolean | null | undefined;

export function csvField(value: CsvValue): string {
  if (value === null || value === undefined) return '';
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function csvRecord(values: readonly CsvValue[]): string {
  return `${values.map(csvField).join(',')}\r\n`;
}

/**
 * A text a spreadsheet would run as a formula (=, +, -, @, tab or CR first) gets a leading apostrophe. For columns
 * whose values a caller chooses, such as the audit trail's actor names (token names, JWT subjects).
 */
export function spreadsheetSafe(value: CsvValue): CsvValue {
  return typeof value === 'string' && /^[=+\-@\t\r]/.test(value) ? `'${value}` : value;
}
