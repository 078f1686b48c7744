/** One challenge of a `WWW-Authenticate` header (RFC 9110 §11.6.1), e.g. `Bearer realm="…",service="…"`. */
export interface AuthChallenge {
  /** Lowercase: `basic`, `bearer`. */
  scheme: string;
  /** Parameter names lowercase, values unquoted. */
  params: Record<string, string>;
}

const TOKEN_CHAR = /[!#$%&'*+.^_`|~0-9A-Za-z-]/;

/**
 * Parses every challenge in a header value. A header can hold several challenges separated by commas,
 * and their parameters are separated by commas too: a name not followed by `=` starts a new challenge.
 * Malformed tails are dropped rather than thrown: the caller reports "no usable challenge".
 */
export function parseChallenges(header: string): AuthChallenge[] {
  const challenges: AuthChallenge[] = [];
  let i = 0;
  const skip = (pattern: RegExp) => {
    while (i < header.length && pattern.test(header[i]!)) i++;
  };
  const token = (): string => {
    const start = i;
    while (i < header.length && TOKEN_CHAR.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  // Leniently up to the next comma or space: some servers leave URLs unquoted, though ':' is no token character.
  const bare = (): string => {
    const start = i;
    while (i < header.length && !/[\s,]/.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  const quoted = (): string => {
    let value = '';
    i++; // opening quote
    while (i < header.length && header[i] !== '"') {
      if (header[i] === '\\' && i + 1 < header.length) i++;
      value += header[i++];
    }
    i++; // closing quote
    return value;
  };

  let current: AuthChallenge | undefined;
  while (i < header.length) {
    skip(/[\s,]/);
    const name = token();
    if (name === '') break;
    skip(/[ \t]/);
    if (current && header[i] === '=') {
      i++;
      skip(/[ \t]/);
      const value = header[i] === '"' ? quoted() : bare();
      current.params[name.toLowerCase()] = value;
      continue;
    }
    // A scheme. A token68 may follow (e.g. `Negotiate abc==`): a registry client has no use for it.
    current = { scheme: name.toLowerCase(), params: {} };
    challenges.push(current);
    const afterScheme = i;
    if (token() !== '') {
      skip(/=/);
      skip(/[ \t]/);
      if (i < header.length && header[i] !== ',') i = afterScheme; // it was an auth-param after all
    }
  }
  return challenges;
}
