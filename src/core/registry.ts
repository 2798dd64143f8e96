/**
 * The subscription index: which sockets want which events. Publishing walks only the matching
 * subscribers (task → sockets, owner → its `subscribeAll` sockets, admins), never every connection.
 */
import type { Principal } from '../options.js';

export interface Subscriber {
  readonly principal: Principal;
  /** Task ids this subscriber follows for updates; maintained by the index. */
  readonly updates: Set<string>;
  /** Task ids this subscriber follows for output; maintained by the index. */
  readonly outputs: Set<string>;
  /** Whether it holds a `subscribeAll`; maintained by the index. */
  all: boolean;
  /** Last delivery round that reached it: how one event reaches a socket at most once. */
  round: number;
  sendUpdate(taskId: string, frame: Buffer): void;
  sendOutput(taskId: string, frame: Buffer): void;
}

/** The visibility rule: admins see everything, owners their own tasks, ownerless tasks are admins'. */
export function canSee(principal: Principal, owner: string | null): boolean {
  return principal.admin || (owner !== null && principal.ownerId === owner);
}

/** Sends an update to `s` unless this round already did: 1 if sent, 0 if not. */
function reach(s: Subscriber, round: number, taskId: string, frame: Buffer): number {
  if (s.round === round) return 0;
  s.round = round;
  s.sendUpdate(taskId, frame);
  return 1;
}

function addTo<K, S>(map: Map<K, Set<S>>, key: K, s: S): void {
  const set = map.get(key);
  if (set) set.add(s);
  else map.set(key, new Set([s]));
}

function removeFrom<K, S>(map: Map<K, Set<S>>, key: K, s: S): void {
  const set = map.get(key);
  if (!set) return;
  set.delete(s);
  if (set.size === 0) map.delete(key);
}

export class SubscriptionIndex<S extends Subscriber = Subscriber> {
  private readonly updates = new Map<string, Set<S>>();
  private readonly outputs = new Map<string, Set<S>>();
  private readonly ownersAll = new Map<string, Set<S>>();
  private readonly adminsAll = new Set<S>();
  private round = 0;

  subscribeUpdates(s: S, taskId: string): void {
    s.updates.add(taskId);
    addTo(this.updates, taskId, s);
  }

  unsubscribeUpdates(s: S, taskId: string): void {
    s.updates.delete(taskId);
    removeFrom(this.updates, taskId, s);
  }

  subscribeOutput(s: S, taskId: string): void {
    s.outputs.add(taskId);
    addTo(this.outputs, taskId, s);
  }

  unsubscribeOutput(s: S, taskId: string): void {
    s.outputs.delete(taskId);
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
    for (const taskId of s.updates) removeFrom(this.updates, taskId, s);
    for (const taskId of s.outputs) removeFrom(this.outputs, taskId, s);
    s.updates.clear();
    s.outputs.clear();
    this.unsubscribeAll(s);
  }

  /** Hands `frame` once to every subscriber allowed to see this task's updates. */
  deliverUpdate(taskId: string, owner: string | null, frame: Buffer): number {
    const round = ++this.round;
    let count = 0;
    const followers = this.updates.get(taskId);
    if (followers) {
      // Checked again here: the owner may have changed since the subscribe was allowed.
      for (const s of followers) if (canSee(s.principal, owner)) count += reach(s, round, taskId, frame);
    }
    const owners = owner === null ? undefined : this.ownersAll.get(owner);
    if (owners) for (const s of owners) count += reach(s, round, taskId, frame);
    for (const s of this.adminsAll) count += reach(s, round, taskId, frame);
    return count;
  }

  /** Hands `frame` to every subscriber of this task's output that may see it. */
  deliverOutput(taskId: string, owner: string | null, frame: Buffer): number {
    const followers = this.outputs.get(taskId);
    if (!followers) return 0;
    let count = 0;
    for (const s of followers) {
      if (canSee(s.principal, owner)) {
        s.sendOutput(taskId, frame);
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
