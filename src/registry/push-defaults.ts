/** Push defaults, apart from push.ts so the CLI can show them without loading the HTTP client. */
export const DEFAULT_JOBS = 4;
export const DEFAULT_CHUNK_SIZE = 64 << 20;
