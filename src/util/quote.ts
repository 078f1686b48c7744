/**
 * Quotes a name, tag or target read from untrusted input for a one-line message:
 * single quotes, control characters and quotes escaped, long values cut.
 */
export function quote(value: string, max = 200): string {
  const cut = value.length > max ? value.slice(0, max) : value;
  // eslint-disable-next-line no-control-regex
  const escaped = cut.replace(/[\u0000-\u001f\u007f-\u009f'\\\u2028\u2029]/g, (ch) => {
    switch (ch) {
      case '\n':
        return '\\n';
      case '\r':
        return '\\r';
      case '\t':
        return '\\t';
      case "'":
        return "\\'";
      case '\\':
        return '\\\\';
      default:
        return `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`;
    }
  });
  return `'${escaped}${cut.length < value.length ? `…(${value.length} chars)` : ''}'`;
}
