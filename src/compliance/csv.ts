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
