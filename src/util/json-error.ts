/**
 * Where and why a JSON text is invalid, as `line 3 column 10: unexpected '}', expected a value`.
 * JSON.parse's messages differ between Node versions and Node 20's give no position, so the text is
 * scanned again here (only after JSON.parse failed; recipes are small). With `quote: false` the
 * offending character is not shown (`unexpected character, expected a value`): for files that may
 * not be what they claim (a path-info file, a layout's index.json), an error never shows content.
 */
export function describeJsonError(text: string, { quote = true }: { quote?: boolean } = {}): string {
  try {
    new JsonScanner(text, quote).document();
    return 'invalid JSON';
  } catch (error) {
    if (!(error instanceof JsonSyntaxError)) throw error;
    const before = text.slice(0, error.offset);
    const line = before.split('\n').length;
    const column = error.offset - before.lastIndexOf('\n');
    return `line ${line} column ${column}: ${error.message}`;
  }
}

class JsonSyntaxError extends Error {
  constructor(
    readonly offset: number,
    message: string,
  ) {
    super(message);
  }
}

class JsonScanner {
  #at = 0;
  constructor(
    private readonly text: string,
    private readonly quote: boolean,
  ) {}

  document(): void {
    this.#value();
    this.#space();
    if (this.#at < this.text.length) this.#fail('expected the end of the file');
  }

  #value(): void {
    this.#space();
    const c = this.text[this.#at];
    if (c === '{') return this.#object();
    if (c === '[') return this.#array();
    if (c === '"') return this.#string();
    if (c !== undefined && /[-0-9]/.test(c)) return this.#number();
    for (const word of ['true', 'false', 'null']) {
      if (this.text.startsWith(word, this.#at)) {
        this.#at += word.length;
        return;
      }
    }
    this.#fail('expected a value');
  }

  #object(): void {
    this.#sequence('}', () => {
      this.#space();
      if (this.text[this.#at] !== '"') this.#fail('expected a key in double quotes');
      this.#string();
      this.#space();
      if (this.text[this.#at] !== ':') this.#fail("expected ':'");
      this.#at++;
      this.#value();
    });
  }

  #array(): void {
    this.#sequence(']', () => this.#value());
  }

  /** An object's members or an array's items: `item` each, separated by commas, up to `close`. */
  #sequence(close: '}' | ']', item: () => void): void {
    this.#at++;
    this.#space();
    if (this.text[this.#at] === close) {
      this.#at++;
      return;
    }
    for (;;) {
      item();
      this.#space();
      const c = this.text[this.#at];
      this.#at++;
      if (c === close) return;
      if (c !== ',') this.#fail(`expected ',' or '${close}'`, this.#at - 1);
    }
  }

  #string(): void {
    const start = this.#at;
    const match = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
    match.lastIndex = start;
    if (match.test(this.text)) {
      this.#at = match.lastIndex;
      return;
    }
    // Find the offending character for the message.
    let i = start + 1;
    while (i < this.text.length && this.text[i] !== '"') {
      const code = this.text.charCodeAt(i);
      if (code < 0x20) throw new JsonSyntaxError(i, 'control character or line break inside a string');
      if (this.text[i] === '\\') {
        if (!/^(["\\/bfnrt]|u[0-9a-fA-F]{4})/.test(this.text.slice(i + 1, i + 6))) throw new JsonSyntaxError(i, 'invalid escape in a string');
        i += this.text[i + 1] === 'u' ? 6 : 2;
      } else {
        i++;
      }
    }
    throw new JsonSyntaxError(start, 'unterminated string');
  }

  #number(): void {
    const match = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/y;
    match.lastIndex = this.#at;
    if (!match.test(this.text)) this.#fail('invalid number');
    this.#at = match.lastIndex;
  }

  #space(): void {
    while (this.#at < this.text.length && ' \t\n\r'.includes(this.text[this.#at]!)) this.#at++;
  }

  #fail(expected: string, at = this.#at): never {
    const c = this.text[at];
    const found = c === undefined ? 'end of file' : this.quote ? `'${c === '\n' ? '\\n' : c}'` : 'character';
    throw new JsonSyntaxError(at, c === undefined ? `unexpected end of file, ${expected}` : `unexpected ${found}, ${expected}`);
  }
}
