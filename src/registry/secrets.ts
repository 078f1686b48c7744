/**
 * Secrets seen during a push (passwords, identity tokens, access tokens) and their removal from every
 * line nix2oci prints: progress and retry lines, notes, errors (their message, stack and causes).
 *
 * A secret is scrubbed in every form it can travel in: as is, base64 (a Basic header, padded or not,
 * standard or URL-safe), percent-encoded (a query or form body) and JSON-escaped. Text of our own making
 * never holds a secret; text from outside (a registry's error document, a header it sent back, a
 * library's message) may, if a registry echoes what it received. A secret of 4 characters or more is cut
 * out wherever it appears. A shorter one cannot be (it would be found inside ordinary words and
 * digests), so text from outside that holds one is withheld whole (see `foreign`).
 */
export const SCRUBBED = '***';
export const WITHHELD = '(the rest of the message is withheld: it may hold a credential)';
/** Forms at least this long are cut out wherever they appear. */
const MIN_ANYWHERE = 4;

export class Secrets {
  /** Every form of every secret, longest first once sorted. */
  #anywhere: string[] = [];
  #short = new Set<string>();

  /** Registers secrets (empty ones are ignored). */
  add(...values: string[]): void {
    const anywhere = new Set(this.#anywhere);
    for (const value of values) {
      if (!value) continue;
      for (const form of formsOf(value)) (form.length >= MIN_ANYWHERE ? anywhere.add(form) : this.#short.add(form));
    }
    this.#anywhere = [...anywhere].sort((a, b) => b.length - a.length);
  }

  /** `text` with every secret of 4 characters or more replaced by `***`. For any line before it is printed. */
  scrub(text: string): string {
    let out = text;
    for (const form of this.#anywhere) if (out.includes(form)) out = out.split(form).join(SCRUBBED);
    return out;
  }

  /**
   * Text that came from outside (a registry's message, a header value): scrubbed, and withheld whole
   * when a secret too short to cut out safely appears in it.
   */
  foreign(text: string): string {
    const out = this.scrub(text);
    for (const short of this.#short) if (out.includes(short)) return WITHHELD;
    return out;
  }

  /** Scrubs an error in place (message, stack, and its causes): it may be printed, with NIX2OCI_DEBUG its stack too. */
  error<T>(err: T): T {
    const seen = new Set<unknown>();
    const visit = (e: unknown, depth: number): void => {
      if (!(e instanceof Error) || seen.has(e) || depth > 8) return;
      seen.add(e);
      const message = this.scrub(e.message);
      if (message !== e.message) e.message = message;
      if (typeof e.stack === 'string') {
        const stack = this.scrub(e.stack);
        if (stack !== e.stack) e.stack = stack;
      }
      visit(e.cause, depth + 1);
      if (e instanceof AggregateError) for (const inner of e.errors) visit(inner, depth + 1);
    };
    visit(err, 0);
    return err;
  }
}

/** The forms a secret can take in what a registry echoes. */
function formsOf(secret: string): string[] {
  const bytes = Buffer.from(secret, 'utf8');
  const base64 = bytes.toString('base64');
  return [
    ...new Set([
      secret,
      base64,
      base64.replace(/=+$/, ''),
      bytes.toString('base64url'),
      encodeURIComponent(secret),
      new URLSearchParams({ s: secret }).toString().slice(2),
      JSON.stringify(secret).slice(1, -1),
    ]),
  ].filter((form) => form !== '');
}

/** Control characters (line breaks above all) of outside text as spaces: an error is one line. */
export function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f\u2028\u2029]+/g, ' ');
}

/** A digest a registry sent back, shown only when it looks like one (a header may carry anything). */
export function shownDigest(value: string): string {
  return /^sha256:[0-9a-f]{64}$/.test(value) ? value : 'something that is not a sha256 digest';
}
