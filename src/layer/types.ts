import type { TarSink } from '../tar/entry.js';

export type { TarEntry, TarSink, Owner } from '../tar/entry.js';

/** Produces a layer's entries into a sink; called once per write of the layer. */
export type LayerSource = (sink: TarSink) => Promise<void>;
