/**
 * The subscription index: which sockets want which events. Publishing walks only the matching
 * subscribers (task → sockets, owner → its `subscribeAll` sockets, admins), never every connection.
 */
import type { Principal } from './ports.js';
import { canSee } from './principal.js';

export interface Subscriber {
  readonly principal: Principal;
  /** Task ids this subscriber follows for updates; maintained by the index, made on first use. */
  updates: Set<string> | undefined;
  /** Task ids this subscriber follows for output; maintained by the index, made on first use. */
  outputs: Set<string> | undefined;
  /** Whether it holds a `subscribeAll`; maintained by the index. */
  all: boolean;
  /** Last delivery round that reached it: how one event reaches a socket at most once. */
  round: number;
  /**
   * The index's record of the delivery batch in which this subscriber last took its `subscribeAll`
   * set's share, and how much of it: what it is still owed when the batch ends or something else
   * reaches it first.
   */
  batch: number;
  taken: number;
  sendUpdate(taskId: string, frame: Buffer, cursor: string): void;
  /** Updates `from` to `to` (exclusive) of a batch's shared lists, in order: as many `sendUpdate`s. */
  sendUpdates(share: BatchShare, from: number, to: number, bytes: number): void;
  sendOutput(taskId: string, frame: Buffer, cursor: string): void;
}

/**
 * The updates one `subscribeAll` set (the admins', or one owner's) takes in a delivery batch: kept
 * once for the whole set and handed to each member once, at the batch's end, instead of once per
 * member per event. A broadcast to N sockets then costs N hand-overs per batch, not per event.
 */
export interface BatchShare {
  readonly frames: Buffer[];
  readonly taskIds: string[];
  readonly cursors: string[];
  bytes: number;
}

/** The admins' `subscribeAll` set, in the batch's shares; owners' sets are keyed by their owner id. */
const ADMINS: unique symbol = Symbol('admins');
type ShareKey = string | typeof ADMINS;

/** Sends an update to `s` unless this round already did: 1 if sent, 0 if not. */
function reach(s: Subscriber, round: number, taskId: string, frame: Buffer, cursor: string): number {
  if (s.round === round) return 0;
  s.round = round;
  s.sendUpdate(taskId, frame, cursor);
  return 1;
}

/**
 * A key's subscribers: most tasks have one, so one is kept as itself and a Set is made only for a
 * second (a Set per task would cost every socket of a targeted workload about 150 bytes).
 */
type Followers<S> = S | Set<S>;

function addTo<K, S extends object>(map: Map<K, Followers<S>>, key: K, s: S): void {
  const followers = map.get(key);
  if (followers === undefined) map.set(key, s);
  else if (followers instanceof Set) followers.add(s);
  else if (followers !== s) map.set(key, new Set([followers, s]));
}

function removeFrom<K, S extends object>(map: Map<K, Followers<S>>, key: K, s: S): void {
  const followers = map.get(key);
  if (followers === s) map.delete(key);
  else if (followers instanceof Set) {
    followers.delete(s);
    if (followers.size === 1) map.set(key, followers.values().next().value!);
  }
}

/** The `subscribeAll` set a principal's subscription is filed in: none for one that can see nothing. */
function shareKey(principal: Principal): ShareKey | undefined {
  return principal.admin ? ADMINS : (principal.ownerId ?? undefined);
}

/** Whether `s`'s `subscribeAll` set takes the updates of a task of `owner`. */
function sharesWith(s: Subscriber, owner: string | null): boolean {
  if (!s.all) return false;
  const key = shareKey(s.principal);
  return key === ADMINS || (key !== undefined && key === owner);
}

/** Adds to a subscriber's own id set, making it on first use. */
function remember(ids: Set<string> | undefined, id: string): Set<string> {
  if (ids) return ids.add(id);
  return new Set([id]);
}

export class SubscriptionIndex<S extends Subscriber = Subscriber> {
  private readonly updates = new Map<string, Followers<S>>();
  private readonly outputs = new Map<string, Followers<S>>();
  private readonly ownersAll = new Map<string, Followers<S>>();
  private readonly adminsAll = new Set<S>();
  private round = 0;
  /** Whether deliveries are batched now (see `batch`), which batch, and its `subscribeAll` shares. */
  private batching = false;
  private batchId = 0;
  private readonly shares = new Map<ShareKey, BatchShare>();
  /** The first error a member threw on its share in this batch: thrown once the batch is handed. */
  private failure: unknown;

  subscribeUpdates(s: S, taskId: string): void {
    s.updates = remember(s.updates, taskId);
    addTo(this.updates, taskId, s);
  }

  unsubscribeUpdates(s: S, taskId: string): void {
    s.updates?.delete(taskId);
    removeFrom(this.updates, taskId, s);
  }

  subscribeOutput(s: S, taskId: string): void {
    s.outputs = remember(s.outputs, taskId);
    addTo(this.outputs, taskId, s);
  }

  unsubscribeOutput(s: S, taskId: string): void {
    s.outputs?.delete(taskId);
    removeFrom(this.outputs, taskId, s);
  }

  /** A principal that is neither admin nor owner holds the subscription but can see nothing. */
  subscribeAll(s: S): void {
    if (s.all) return;
    // Joining mid-batch: what its set took earlier in the batch was delivered before it joined.
    const key = shareKey(s.principal);
    s.batch = this.batchId;
    s.taken = (key !== undefined && this.shares.get(key)?.frames.length) || 0;
    s.all = true;
    if (s.principal.admin) this.adminsAll.add(s);
    else if (s.principal.ownerId !== null) addTo(this.ownersAll, s.principal.ownerId, s);
  }

  unsubscribeAll(s: S): void {
    if (!s.all) return;
    // Leaving mid-batch: it still takes what was delivered while it was in.
    this.handShare(s);
    s.all = false;
    this.adminsAll.delete(s);
    if (s.principal.ownerId !== null) removeFrom(this.ownersAll, s.principal.ownerId, s);
  }

  /** Frees everything a subscriber holds; after it the index keeps no reference to it. */
  remove(s: S): void {
    if (s.updates) for (const taskId of s.updates) removeFrom(this.updates, taskId, s);
    if (s.outputs) for (const taskId of s.outputs) removeFrom(this.outputs, taskId, s);
    s.updates = undefined;
    s.outputs = undefined;
    this.unsubscribeAll(s);
  }

  /**
   * Whether any subscriber might take this event: never false when deliverUpdate or
   * deliverOutput would reach one (it may be true when they then reach none, e.g. a follower
   * that may not see the owner). False lets the event go unframed.
   */
  reaches(kind: 'update' | 'output', taskId: string, owner: string | null): boolean {
    if (kind === 'output') return this.outputs.has(taskId);
    return this.adminsAll.size > 0 || this.updates.has(taskId) || (owner !== null && this.ownersAll.has(owner));
  }

  /**
   * Runs `deliver` (synchronous deliveries of consecutive events) as one batch: the updates of
   * `subscribeAll` sets are kept once per set and handed to each member at the end, in order. No
   * other code runs in between, and a member takes its share before anything else reaches it
   * (output, leaving its set), so each socket gets exactly what, and in the order, one delivery
   * at a time would have given it. Throws, after every member has had its share, the first error
   * a member threw.
   */
  batch(deliver: () => void): void {
    if (this.batching) {
      deliver();
      return;
    }
    this.batching = true;
    this.batchId++;
    this.failure = undefined;
    try {
      deliver();
    } finally {
      // Even when `deliver` threw: what it delivered before is handed, and no share outlives its batch.
      this.batching = false;
      for (const [key, share] of this.shares) {
        const members = key === ADMINS ? this.adminsAll : this.ownersAll.get(key);
        if (members instanceof Set) for (const s of members) this.hand(s, share);
        else if (members) this.hand(members, share);
      }
      this.shares.clear();
    }
    const failure = this.failure;
    this.failure = undefined;
    if (failure !== undefined) throw failure;
  }

  /** Hands `frame` once to every subscriber allowed to see this task's updates. */
  deliverUpdate(taskId: string, owner: string | null, frame: Buffer, cursor: string): number {
    const round = ++this.round;
    const batching = this.batching;
    let count = 0;
    const followers = this.updates.get(taskId);
    // Checked again here: the owner may have changed since the subscribe was allowed. In a batch,
    // a follower whose `subscribeAll` set takes the event gets it there, in its place.
    if (followers instanceof Set) {
      for (const s of followers) {
        if (canSee(s.principal, owner) && !(batching && sharesWith(s, owner))) count += reach(s, round, taskId, frame, cursor);
      }
    } else if (followers && canSee(followers.principal, owner) && !(batching && sharesWith(followers, owner))) {
      count += reach(followers, round, taskId, frame, cursor);
    }
    const owners = owner === null ? undefined : this.ownersAll.get(owner);
    if (owners !== undefined) {
      if (batching) count += this.share(owner!, owners instanceof Set ? owners.size : 1, taskId, frame, cursor);
      else if (owners instanceof Set) for (const s of owners) count += reach(s, round, taskId, frame, cursor);
      else count += reach(owners, round, taskId, frame, cursor);
    }
    if (this.adminsAll.size > 0) {
      if (batching) count += this.share(ADMINS, this.adminsAll.size, taskId, frame, cursor);
      else for (const s of this.adminsAll) count += reach(s, round, taskId, frame, cursor);
    }
    return count;
  }

  /** Hands `frame` to every subscriber of this task's output that may see it. */
  deliverOutput(taskId: string, owner: string | null, frame: Buffer, cursor: string): number {
    const followers = this.outputs.get(taskId);
    if (!(followers instanceof Set)) {
      if (!followers || !canSee(followers.principal, owner)) return 0;
      // In a batch, the updates delivered before this output go first.
      if (this.batching) this.handShare(followers);
      followers.sendOutput(taskId, frame, cursor);
      return 1;
    }
    let count = 0;
    for (const s of followers) {
      if (canSee(s.principal, owner)) {
        if (this.batching) this.handShare(s);
        s.sendOutput(taskId, frame, cursor);
        count++;
      }
    }
    return count;
  }

  /** Keeps an update for a `subscribeAll` set of `members` sockets, in this batch's share; `members` reached. */
  private share(key: ShareKey, members: number, taskId: string, frame: Buffer, cursor: string): number {
    let share = this.shares.get(key);
    if (share === undefined) this.shares.set(key, (share = { frames: [], taskIds: [], cursors: [], bytes: 0 }));
    share.frames.push(frame);
    share.taskIds.push(taskId);
    share.cursors.push(cursor);
    share.bytes += frame.length;
    return members;
  }

  /** Hands `s` what its `subscribeAll` set took in this batch and it has not had yet. */
  private handShare(s: S): void {
    if (!s.all || this.shares.size === 0) return;
    const key = shareKey(s.principal);
    const share = key === undefined ? undefined : this.shares.get(key);
    if (share !== undefined) this.hand(s, share);
  }

  /**
   * Never throws: a member that fails on its share (its socket's error, a host listener's) costs
   * no other socket anything; the batch throws the first such error once every member had its share.
   */
  private hand(s: S, share: BatchShare): void {
    const from = s.batch === this.batchId ? s.taken : 0;
    const to = share.frames.length;
    s.batch = this.batchId;
    s.taken = to;
    if (from >= to) return;
    let bytes = share.bytes;
    for (let i = 0; i < from; i++) bytes -= share.frames[i]!.length;
    try {
      s.sendUpdates(share, from, to, bytes);
    } catch (error) {
      this.failure ??= error ?? new Error('a subscriber threw nothing');
    }
  }

  /** Sizes for tests and metrics. */
  stats(): { tasks: number; outputs: number; ownersAll: number; adminsAll: number } {
    return { tasks: this.updates.size, outputs: this.outputs.size, ownersAll: this.ownersAll.size, adminsAll: this.adminsAll.size };
  }
}
