import { availableParallelism } from 'node:os';
import { MessageChannel, Worker, type MessagePort, type TransferListItem } from 'node:worker_threads';
import { threadPrologue } from './young-generation.js';

/**
 * The worker threads of the process, one set shared by every kind of work done off the main thread
 * (hashing file ranges, hashing a layer's stream, unzipping wheel entries). Each thread is a Node
 * isolate that costs about 65 ms of CPU to boot, compiles its own optimized code and keeps its own
 * heap and malloc arena: on a machine of few cores, a pool of threads per kind of work spent a core's
 * worth of time on that and held tens of MB more. One thread runs any number of **services** (a
 * program given as source, compiled once per thread and run once per connection), each talking to the
 * main thread over a MessagePort of its own.
 */

/** A program a thread can run: a function expression, as source, called with the connection's port. */
export interface Service {
  /** Names the program: a thread compiles each source once. */
  name: string;
  /** `(port) => …`; it must use nothing from outside its own text but `require` and Node's globals. */
  source: string;
}

/** The threads' one program: it starts a service on each port it is sent. */
const THREAD_SOURCE = `
const { parentPort } = require('node:worker_threads');
const programs = new Map();
parentPort.on('message', ({ name, source, port }) => {
  let main = programs.get(name);
  if (!main) programs.set(name, (main = new Function('require', 'return (' + source + ');')(require)));
  main(port);
});
`;

/**
 * Most of what the services allocate are buffers outside the heap, and their JavaScript objects are few
 * and small: a small young generation keeps each thread's memory down.
 */
const YOUNG_GENERATION_MB = 4;

/** One service's line to one thread. Ref'd while it has work there, so that an idle pool never holds the process. */
export class Connection {
  #active = false;
  #closed = false;

  constructor(
    readonly thread: Thread,
    readonly port: MessagePort,
    /** Called once if the thread ends: with the error that killed it, or null when it was stopped while idle. */
    readonly onEnd: (error: Error | null) => void,
  ) {
    port.unref();
  }

  post(message: unknown, transfer: readonly TransferListItem[] = []): void {
    this.port.postMessage(message, transfer);
  }

  /** The service has work on the thread: the process waits for it. */
  busy(): void {
    if (this.#active || this.#closed) return;
    this.#active = true;
    this.thread.active++;
    this.port.ref();
  }

  /** The service has nothing in flight. */
  idle(): void {
    if (!this.#active) return;
    this.#active = false;
    this.thread.active--;
    this.port.unref();
  }

  /** The service is done with the thread. */
  close(): void {
    if (this.#closed) return;
    this.idle();
    this.#closed = true;
    this.thread.forget(this);
    this.port.close();
  }
}

export class Thread {
  readonly #worker: Worker;
  readonly #connections = new Set<Connection>();
  readonly #end: (error: Error | null) => void;
  /** Connections with work in flight. */
  active = 0;
  #ended = false;

  constructor(onEnd: (thread: Thread) => void) {
    this.#worker = new Worker(`'use strict';\n${threadPrologue()}${THREAD_SOURCE}`, { eval: true, resourceLimits: { maxYoungGenerationSizeMb: YOUNG_GENERATION_MB } });
    this.#worker.unref();
    this.#end = (error) => {
      if (this.#ended) return;
      this.#ended = true;
      onEnd(this);
      for (const connection of [...this.#connections]) {
        this.#connections.delete(connection);
        connection.idle();
        connection.onEnd(error);
      }
    };
    this.#worker.on('error', (error) => this.#end(error));
    this.#worker.on('exit', (code) => this.#end(new Error(`worker thread exited with code ${code}`)));
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Starts `service` on this thread, on a port of its own. */
  connect(service: Service, onEnd: (error: Error | null) => void): Connection {
    const { port1, port2 } = new MessageChannel();
    const connection = new Connection(this, port1, onEnd);
    this.#connections.add(connection);
    this.#worker.postMessage({ name: service.name, source: service.source, port: port2 }, [port2]);
    return connection;
  }

  /** @internal */
  forget(connection: Connection): void {
    this.#connections.delete(connection);
  }

  /** Ends the thread; its connections' `onEnd` get null at once, so none is used while it exits. */
  stop(): void {
    this.#end(null);
    void this.#worker.terminate();
  }
}

/**
 * The process's threads, started on demand: thread `i` is the same for every pool, so that pools of
 * `n` threads share the first `n` of them.
 */
export class Threads {
  readonly #threads: (Thread | undefined)[] = [];

  constructor(readonly size: number = availableParallelism()) {}

  /** Thread `i`, started if it is not running. */
  thread(i: number): Thread {
    if (!Number.isInteger(i) || i < 0) throw new Error(`no thread ${i}`);
    let thread = this.#threads[i];
    if (!thread || thread.ended) {
      const started: Thread = new Thread((ended) => {
        if (this.#threads[i] === ended) this.#threads[i] = undefined;
      });
      this.#threads[i] = thread = started;
    }
    return thread;
  }

  /** How many threads run. */
  get running(): number {
    return this.#threads.filter((t) => t && !t.ended).length;
  }

  /** The running thread (among the first `size`) with the least work in flight; thread 0 when none runs. */
  leastBusy(): Thread {
    let best: Thread | undefined;
    for (let i = 0; i < this.size; i++) {
      const thread = this.#threads[i];
      if (!thread || thread.ended) continue;
      if (!best || thread.active < best.active) best = thread;
    }
    if (best && best.active === 0) return best;
    // Every running thread has work: start another while there is room.
    for (let i = 0; i < this.size; i++) if (!this.#threads[i] || this.#threads[i]!.ended) return this.thread(i);
    return best ?? this.thread(0);
  }

  /**
   * Ends the threads with no work in flight (a later use starts them again). A build calls it once it is
   * done with them: their teardown then overlaps what follows instead of holding up the process's exit.
   */
  stopIdle(): void {
    for (const thread of this.#threads) if (thread && !thread.ended && thread.active === 0) thread.stop();
  }
}

let shared: Threads | undefined;
/** The process's one set of threads. */
export function sharedThreads(): Threads {
  shared ??= new Threads();
  return shared;
}
