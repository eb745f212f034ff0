/*
 * mm/locks.h - every engine lock, in acquisition order.
 *
 * A thread may take a lock only if every lock it already holds ranks lower. Debug builds
 * (MV_DEBUG >= 2) check this on every acquisition and check on release that locks are
 * dropped; the ranks below are the single source of truth for the order.
 *
 * Hypervisor code cannot sleep, so all engine locks spin (mm/lock.h). None is held across
 * a platform hook other than tlb_flush and trace; nothing is allocated under any of them
 * (structures a locked path needs are taken from caches filled before the lock).
 */
#ifndef MV_MM_LOCKS_H
#define MV_MM_LOCKS_H

enum mv_lock_rank {
    MV_LOCK_RANK_NONE = 0,

    /*
     * Host domain table: guards creation and removal of domains and the id -> domain map.
     * Lookups of a live domain take it for reading only.
     */
    MV_LOCK_RANK_DOMTABLE = 10,

    /*
     * Per-domain lock for state that several modules read together (reserved rank; a
     * domain's teardown is serialized by a claim flag, not a lock, because it frees).
     */
    MV_LOCK_RANK_DOMAIN = 20,

    /*
     * Per-domain p2m lock: every p2m update (set_entry, type changes, populate, decrease,
     * log-dirty transitions) and the domain's p2m table cache, which every mutator shares:
     * it is checked and taken from under this lock, and refilled from the heap with it
     * dropped (p2m/ept.c). Lookups take no lock. Listeners run under it and may take the
     * shadow lock, never the reverse.
     */
    MV_LOCK_RANK_P2M = 30,

    /*
     * Per-domain PV page-table lock: validation and devalidation of one domain's PV tables.
     */
    MV_LOCK_RANK_PV = 40,

    /*
     * Per-domain shadow (paging) lock, as Xen's paging lock: shadow hash, pool, rmap.
     * Never calls a p2m mutator while held.
     */
    MV_LOCK_RANK_SHADOW = 50,

    /*
     * Sharing lock: the host's shared-frame handles and dedup index.
     */
    MV_LOCK_RANK_SHARING = 60,

    /*
     * Per-domain page-list lock: the domain's page count and its list of owned frames.
     */
    MV_LOCK_RANK_PAGE_ALLOC = 70,

    /*
     * Per-node heap lock: the buddy free lists, the node's decommit queue and counters.
     * Innermost allocation lock: under it no other engine lock is taken. Two heap locks are
     * never held together (fallback to another node drops the first).
     */
    MV_LOCK_RANK_HEAP = 80,

    /*
     * Host statistics and fault-injection state: leaf lock.
     */
    MV_LOCK_RANK_LEAF = 90,
};

#endif
