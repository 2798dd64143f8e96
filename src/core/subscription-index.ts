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
  sendUpdate(taskId: string, frame: Buffer, cursor: string): void;
  sendOutput(taskId: string, frame: Buffer, cursor: string): void;
}

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
    s.all = true;
    if (s.principal.admin) this.adminsAll.add(s);
    else if (s.principal.ownerId !== null) addTo(this.ownersAll, s.principal.ownerId, s);
  }

  unsubscribeAll(s: S): void {
    if (!s.all) return;
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

  /** Hands `frame` once to every subscriber allowed to see this task's updates. */
  deliverUpdate(taskId: string, owner: string | null, frame: Buffer, cursor: string): number {
    const round = ++this.round;
    let count = 0;
    const followers = this.updates.get(taskId);
    // Checked again here: the owner may have changed since the subscribe was allowed.
    if (followers instanceof Set) {
      for (const s of followers) if (canSee(s.principal, owner)) count += reach(s, round, taskId, frame, cursor);
    } else if (followers && canSee(followers.principal, owner)) count += reach(followers, round, taskId, frame, cursor);
    const owners = owner === null ? undefined : this.ownersAll.get(owner);
    if (owners instanceof Set) for (const s of owners) count += reach(s, round, taskId, frame, cursor);
    else if (owners) count += reach(owners, round, taskId, frame, cursor);
    for (const s of this.adminsAll) count += reach(s, round, taskId, frame, cursor);
    return count;
  }

  /** Hands `frame` to every subscriber of this task's output that may see it. */
  deliverOutput(taskId: string, owner: string | null, frame: Buffer, cursor: string): number {
    const followers = this.outputs.get(taskId);
    if (!(followers instanceof Set)) {
      if (!followers || !canSee(followers.principal, owner)) return 0;
      followers.sendOutput(taskId, frame, cursor);
      return 1;
    }
    let count = 0;
    for (const s of followers) {
      if (canSee(s.principal, owner)) {
        s.sendOutput(taskId, frame, cursor);
        count++;
      }
    }
    return count;
  }

  /** Sizes for tests and metrics. */
  stats(): { tasks: number; outputs: number; ownersAll: number; adminsAll: number } {
    return { tasks: this.updates.size, outputs: this.outputs.size, ownersAll: this.ownersAll.size, adminsAll: this.adminsAll.size };
  }
}
