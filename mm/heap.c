/*
 * mm/heap.c - per-node buddy heaps, per-slot order-0 caches and the decommit queue.
 *
 * A frame that leaves its owner goes through three places before it is handed out again:
 *
 *   owner --free--> slot cache (order 0; reused at once, scrubbed if zero content is asked)
 *         --free--> decommit queue (larger blocks, and cache overflow)
 *   decommit queue --batch, no lock held: platform mem_decommit--> buddy free lists (zero)
 *
 * so the host's resident memory follows the accounting, a frame in the queue is never
 * handed out, and every frame on a free list is known to read zero (unless the platform
 * failed a decommit: such blocks are marked dirty, never merged with clean ones, and
 * scrubbed when handed out).
 *
 * Buddy blocks are naturally aligned in machine frame numbers (an order-9 block is a 2 MiB
 * machine superpage) and never straddle a node's range. Only a block's head descriptor
 * carries the block's order and its zero mark; tails are plain MV_OWNER_FREE frames.
 *
 * Locks: one spinlock per node (MV_LOCK_RANK_HEAP), held only for list surgery; never two
 * at once; platform hooks (decommit, scrubbing) run with none held. Slot caches belong to
 * their slot and take no lock.
 */
#include "mm-internal.h"

/* ---- Intrusive lists through the link word ------------------------------------------- */

static inline uint32_t link_next(const struct mv_frame *f)
{
    return (uint32_t)(atomic_load_explicit(&f->link, memory_order_relaxed) >> 32);
}

static inline uint32_t link_prev(const struct mv_frame *f)
{
    return (uint32_t)atomic_load_explicit(&f->link, memory_order_relaxed);
}

static inline void link_set(struct mv_frame *f, uint32_t next, uint32_t prev)
{
    atomic_store_explicit(&f->link, ((uint64_t)next << 32) | prev, memory_order_relaxed);
}

static inline uint32_t flags_get(const struct mv_frame *f)
{
    return atomic_load_explicit(&f->flags, memory_order_relaxed);
}

static inline void flags_set(struct mv_frame *f, uint32_t v)
{
    atomic_store_explicit(&f->flags, v, memory_order_relaxed);
}

static inline void owner_set(struct mv_frame *f, uint32_t owner)
{
    atomic_store_explicit(&f->owner, owner, memory_order_release);
}

static void list_push(struct mv_heap_node *n, unsigned order, uint32_t idx)
{
    uint32_t head = n->free_head[order];
    link_set(&n->ft[idx], head, MV_IDX_NIL);
    if (head != MV_IDX_NIL)
        link_set(&n->ft[head], link_next(&n->ft[head]), idx);
    n->free_head[order] = idx;
    n->free_blocks[order]++;
}

static void list_del(struct mv_heap_node *n, unsigned order, uint32_t idx)
{
    uint32_t next = link_next(&n->ft[idx]), prev = link_prev(&n->ft[idx]);
    if (prev != MV_IDX_NIL)
        link_set(&n->ft[prev], next, link_prev(&n->ft[prev]));
    else
        n->free_head[order] = next;
    if (next != MV_IDX_NIL)
        link_set(&n->ft[next], link_next(&n->ft[next]), prev);
    n->free_blocks[order]--;
}

/* ---- Buddy core (node lock held) ----------------------------------------------------- */

/*
 * Put the block [idx, idx + 2^order) on the free lists, merging with free buddies of the
 * same cleanliness. Its frames are already MV_OWNER_FREE except the head.
 */
static void buddy_insert(struct mv_heap_node *n, uint32_t idx, unsigned order, bool zero)
{
    mv__assert_held(&n->lock);
    uint64_t frames = 1ull << order;
    mv_mfn_t mfn = n->first_mfn + idx;
    uint32_t want = zero ? MV_PGF_ZERO : 0;

    n->free_frames += frames;
    if (!zero)
        n->free_dirty += frames;
    /* The head may end up a tail of a merged block: it is free from here on. */
    owner_set(&n->ft[idx], MV_OWNER_FREE);
    while (order < MV_MAX_ORDER) {
        mv_mfn_t buddy = mfn ^ (1ull << order);
        if (buddy < n->first_mfn || buddy - n->first_mfn + (1ull << order) > n->nr_frames)
            break;
        struct mv_frame *b = &n->ft[buddy - n->first_mfn];
        uint32_t bf = flags_get(b);
        if (mv__frame_owner(b) != MV_OWNER_FREE || !(bf & MV_PGF_HEAD) ||
            mv__pgf_order(bf) != order || (bf & MV_PGF_ZERO) != want)
            break;
        list_del(n, order, (uint32_t)(buddy - n->first_mfn));
        /* The merged block's head is the lower of the two; the upper becomes a tail. */
        struct mv_frame *upper = &n->ft[(mfn > buddy ? mfn : buddy) - n->first_mfn];
        flags_set(upper, flags_get(upper) & MV_PGF_ZERO);
        mfn = mfn < buddy ? mfn : buddy;
        order++;
    }
    idx = (uint32_t)(mfn - n->first_mfn);
    flags_set(&n->ft[idx], mv__pgf_head(order) | want);
    list_push(n, order, idx);
}

/*
 * Take a block of exactly `order` off the free lists, splitting a larger one. Its head is
 * given to `owner` before the lock drops (so no merge can see it as free); returns the
 * node-relative index, or MV_IDX_NIL. *zero tells whether the block reads zero.
 */
static uint32_t buddy_take(struct mv_heap_node *n, unsigned order, uint32_t owner, bool *zero)
{
    mv__assert_held(&n->lock);
    unsigned o = order;
    while (o <= MV_MAX_ORDER && n->free_head[o] == MV_IDX_NIL)
        o++;
    if (o > MV_MAX_ORDER)
        return MV_IDX_NIL;
    uint32_t idx = n->free_head[o];
    list_del(n, o, idx);
    uint32_t z = flags_get(&n->ft[idx]) & MV_PGF_ZERO;
    while (o > order) {
        o--;
        uint32_t half = idx + (1u << o);
        flags_set(&n->ft[half], mv__pgf_head(o) | z);
        list_push(n, o, half);
    }
    n->free_frames -= 1ull << order;
    if (!z)
        n->free_dirty -= 1ull << order;
    flags_set(&n->ft[idx], mv__pgf_head(order) | z);
    owner_set(&n->ft[idx], owner);
    *zero = z != 0;
    return idx;
}

/* ---- The decommit queue -------------------------------------------------------------- */

/* Queue a block whose frames are all MV_OWNER_PENDING; true when a batch is due. */
static bool pending_push(mv_host_t *h, struct mv_heap_node *n, uint32_t idx, unsigned order)
{
    mv__assert_held(&n->lock);
    flags_set(&n->ft[idx], mv__pgf_head(order));
    link_set(&n->ft[idx], n->pending_head, MV_IDX_NIL);
    n->pending_head = idx;
    n->pending_frames += 1ull << order;
    return n->pending_frames >= h->decommit_batch;
}

/* Detach the whole queue for decommitting outside the lock. */
static uint32_t pending_detach(struct mv_heap_node *n, uint64_t *frames)
{
    mv__assert_held(&n->lock);
    uint32_t list = n->pending_head;
    *frames = n->pending_frames;
    n->decommitting += n->pending_frames;
    n->pending_head = MV_IDX_NIL;
    n->pending_frames = 0;
    return list;
}

/*
 * Decommit a detached list (no lock held), then put its blocks on the free lists: zero
 * where the platform succeeded, dirty where it failed.
 */
static void pending_process(mv_host_t *h, struct mv_heap_node *n, uint32_t list,
                            uint64_t frames)
{
    MV_ASSERT2(mv__lock_depth() == 0);
    if (list == MV_IDX_NIL)
        return;
    bool ok = true;
    uint64_t run_start = 0, run_len = 0;
    for (uint32_t idx = list; idx != MV_IDX_NIL; idx = link_next(&n->ft[idx])) {
        uint64_t len = 1ull << mv__pgf_order(flags_get(&n->ft[idx]));
        /* Neighbours merge into one call whichever way the queue lists them. */
        if (run_len && run_start + run_len == idx) {
            run_len += len;
            continue;
        }
        if (run_len && idx + len == run_start) {
            run_start = idx;
            run_len += len;
            continue;
        }
        if (run_len && h->plat->mem_decommit(h->plat, n->first_mfn + run_start, run_len))
            ok = false;
        run_start = idx;
        run_len = len;
    }
    if (run_len && h->plat->mem_decommit(h->plat, n->first_mfn + run_start, run_len))
        ok = false;
    if (!ok) {
        atomic_fetch_add_explicit(&h->decommit_errors, 1, memory_order_relaxed);
        mv__log(h, MV_LOG_WARN, "node %u: decommit failed; %llu frames stay committed",
                n->id, (unsigned long long)frames);
    }
    atomic_fetch_add_explicit(&h->decommit_batches, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->decommit_frames, frames, memory_order_relaxed);

    /* Tails become free before the lock; heads change under it (buddy_insert). */
    for (uint32_t idx = list; idx != MV_IDX_NIL; idx = link_next(&n->ft[idx])) {
        uint64_t len = 1ull << mv__pgf_order(flags_get(&n->ft[idx]));
        for (uint64_t i = 1; i < len; i++) {
            flags_set(&n->ft[idx + i], 0);
            owner_set(&n->ft[idx + i], MV_OWNER_FREE);
        }
    }
    mv_spin_lock(&n->lock);
    for (uint32_t idx = list, next; idx != MV_IDX_NIL; idx = next) {
        next = link_next(&n->ft[idx]);
        buddy_insert(n, idx, mv__pgf_order(flags_get(&n->ft[idx])), ok);
    }
    n->decommitting -= frames;
    mv_spin_unlock(&n->lock);
}

static void pending_flush(mv_host_t *h, struct mv_heap_node *n)
{
    uint64_t frames;
    mv_spin_lock(&n->lock);
    uint32_t list = pending_detach(n, &frames);
    mv_spin_unlock(&n->lock);
    pending_process(h, n, list, frames);
}

/* ---- Slot caches --------------------------------------------------------------------- */

static uint32_t caller_slot(const mv_host_t *h)
{
    uint32_t s = h->plat->slot_id(h->plat);
    return s < h->max_slots ? s : MV_SLOT_NONE;
}

static uint32_t home_node(mv_host_t *h, uint32_t slot)
{
    if (h->nr_nodes == 1)
        return 0;
    if (slot == MV_SLOT_NONE)
        return atomic_fetch_add_explicit(&h->next_home, 1, memory_order_relaxed) % h->nr_nodes;
    struct mv_slot_cache *c = mv__slot_cache(h, slot, 0);
    if (!c->home)
        c->home = atomic_fetch_add_explicit(&h->next_home, 1, memory_order_relaxed) %
                      h->nr_nodes + 1;
    return c->home - 1;
}

/* Move `count` frames from the top of a slot cache back to its node (no lock held). */
static void cache_spill(mv_host_t *h, struct mv_heap_node *n, struct mv_slot_cache *c,
                        uint32_t count)
{
    uint32_t have = atomic_load_explicit(&c->n, memory_order_relaxed);
    if (count > have)
        count = have;
    if (!count)
        return;
    bool due = false;
    mv_spin_lock(&n->lock);
    for (uint32_t i = have - count; i < have; i++) {
        uint32_t idx = (uint32_t)(c->mfn[i] - n->first_mfn);
        struct mv_frame *f = &n->ft[idx];
        if (flags_get(f) & MV_PGF_ZERO) {
            buddy_insert(n, idx, 0, true);
        } else {
            owner_set(f, MV_OWNER_PENDING);
            due |= pending_push(h, n, idx, 0);
        }
    }
    atomic_store_explicit(&c->n, have - count, memory_order_relaxed);
    uint64_t frames = 0;
    uint32_t list = due ? pending_detach(n, &frames) : MV_IDX_NIL;
    mv_spin_unlock(&n->lock);
    pending_process(h, n, list, frames);
}

/* Fill an empty slot cache from its node: half the cache, in one lock hold. */
static uint32_t cache_refill(mv_host_t *h, struct mv_heap_node *n, struct mv_slot_cache *c)
{
    uint32_t want = h->cache_max / 2 ? h->cache_max / 2 : 1, got = 0;
    for (int pass = 0; pass < 2 && !got; pass++) {
        mv_spin_lock(&n->lock);
        bool zero;
        uint32_t idx;
        while (got < want && (idx = buddy_take(n, 0, MV_OWNER_CACHED, &zero)) != MV_IDX_NIL) {
            /* Cached frames hold no list links: handing one out touches flags and owner. */
            atomic_store_explicit(&n->ft[idx].link, MV_INVALID_GFN, memory_order_relaxed);
            c->mfn[got++] = n->first_mfn + idx;
        }
        bool queued = n->pending_frames != 0;
        mv_spin_unlock(&n->lock);
        /* Nothing free but frames waiting for decommit: decommit them now, retry once. */
        if (got || !queued)
            break;
        pending_flush(h, n);
    }
    atomic_store_explicit(&c->n, got, memory_order_relaxed);
    return got;
}

/* ---- Allocation and free ------------------------------------------------------------- */

static void hand_out(mv_host_t *h, struct mv_heap_node *n, uint32_t idx, unsigned order,
                     uint32_t owner, bool zero, uint32_t flags)
{
    uint64_t len = 1ull << order;
    if ((flags & MV_ALLOC_ZERO) && !zero) {
        memset(n->base + ((uint64_t)idx << MV_PAGE_SHIFT), 0, len << MV_PAGE_SHIFT);
        atomic_fetch_add_explicit(&h->scrubbed_frames, len, memory_order_relaxed);
    }
    for (uint64_t i = 0; i < len; i++) {
        struct mv_frame *f = &n->ft[idx + i];
        atomic_store_explicit(&f->count, 0, memory_order_relaxed);
        atomic_store_explicit(&f->type_info, 0, memory_order_relaxed);
        atomic_store_explicit(&f->link, MV_INVALID_GFN, memory_order_relaxed);
        flags_set(f, i ? 0 : mv__pgf_head(order));
        owner_set(f, owner);
    }
}

static int alloc_order0_cached(mv_host_t *h, uint32_t slot, struct mv_heap_node *n,
                               uint32_t owner, uint32_t flags, mv_mfn_t *out)
{
    struct mv_slot_cache *c = mv__slot_cache(h, slot, n->id);
    uint32_t have = atomic_load_explicit(&c->n, memory_order_relaxed);
    if (!have && !(have = cache_refill(h, n, c)))
        return MV_ENOMEM;
    mv_mfn_t mfn = c->mfn[--have];
    atomic_store_explicit(&c->n, have, memory_order_relaxed);
    struct mv_frame *f = &n->ft[mfn - n->first_mfn];
    /* A cached frame has no references, no type and no link (freed so, or refilled so). */
    if ((flags & MV_ALLOC_ZERO) && !(flags_get(f) & MV_PGF_ZERO)) {
        memset(mv__frame_va_fast(n, mfn), 0, MV_PAGE_SIZE);
        atomic_fetch_add_explicit(&h->scrubbed_frames, 1, memory_order_relaxed);
    }
    flags_set(f, mv__pgf_head(0));
    owner_set(f, owner);
    *out = mfn;
    return 0;
}

static int alloc_from_node(mv_host_t *h, uint32_t slot, struct mv_heap_node *n, unsigned order,
                           uint32_t owner, uint32_t flags, mv_mfn_t *out)
{
    bool spilled = false;
    for (int pass = 0; pass < 3; pass++) {
        bool zero;
        mv_spin_lock(&n->lock);
        uint32_t idx = buddy_take(n, order, owner, &zero);
        bool queued = n->pending_frames != 0;
        mv_spin_unlock(&n->lock);
        if (idx != MV_IDX_NIL) {
            hand_out(h, n, idx, order, owner, zero, flags);
            *out = n->first_mfn + idx;
            return 0;
        }
        /*
         * Nothing free that large: decommit what waits in the queue, and give back the
         * frames this slot parked in its cache, which may be what splits the block; then
         * retry. Bounded: at most two retries.
         */
        struct mv_slot_cache *c = slot != MV_SLOT_NONE ? mv__slot_cache(h, slot, n->id) : NULL;
        bool cached = c && !spilled && atomic_load_explicit(&c->n, memory_order_relaxed);
        if (!queued && !cached)
            break;
        if (cached) {
            cache_spill(h, n, c, h->cache_max);
            spilled = true;
        }
        pending_flush(h, n);
    }
    return MV_ENOMEM;
}

int mv__heap_alloc(mv_host_t *h, unsigned order, uint32_t node, uint32_t flags,
                   uint32_t owner, mv_mfn_t *out)
{
    if (order > MV_MAX_ORDER || (flags & ~(MV_ALLOC_ZERO | MV_ALLOC_EXACT_NODE)) || !out)
        return MV_EINVAL;
    if (node != MV_NODE_ANY && node >= h->nr_nodes)
        return MV_ENODEV;
    if (node == MV_NODE_ANY && (flags & MV_ALLOC_EXACT_NODE))
        return MV_EINVAL;
    if (mv__should_fail(h, MV_FAIL_HEAP_ALLOC))
        return MV_ENOMEM;

    uint32_t slot = caller_slot(h);
    uint32_t start = node == MV_NODE_ANY ? home_node(h, slot) : node;
    uint32_t tries = (flags & MV_ALLOC_EXACT_NODE) ? 1 : h->nr_nodes;
    for (uint32_t i = 0; i < tries; i++) {
        struct mv_heap_node *n = h->node[h->fallback[start][i]];
        int rc = (order == 0 && slot != MV_SLOT_NONE)
                     ? alloc_order0_cached(h, slot, n, owner, flags, out)
                     : alloc_from_node(h, slot, n, order, owner, flags, out);
        if (rc == 0) {
            if (i)
                atomic_fetch_add_explicit(&n->fallback_allocs, 1, memory_order_relaxed);
            return 0;
        }
    }
    return MV_ENOMEM;
}

void mv__heap_free(mv_host_t *h, mv_mfn_t mfn, unsigned order)
{
    struct mv_heap_node *n = mv__mfn_node(h, mfn);
    MV_ASSERT(n && order <= MV_MAX_ORDER && !(mfn & ((1ull << order) - 1)));
    uint32_t idx = (uint32_t)(mfn - n->first_mfn);
    uint32_t slot = order == 0 ? caller_slot(h) : MV_SLOT_NONE;

    if (slot != MV_SLOT_NONE) {
        struct mv_slot_cache *c = mv__slot_cache(h, slot, n->id);
        uint32_t have = atomic_load_explicit(&c->n, memory_order_relaxed);
        if (have == h->cache_max) {
            cache_spill(h, n, c, h->cache_max / 2 ? h->cache_max / 2 : 1);
            have = atomic_load_explicit(&c->n, memory_order_relaxed);
        }
        struct mv_frame *f = &n->ft[idx];
        MV_ASSERT2(!atomic_load_explicit(&f->count, memory_order_relaxed) &&
                   !atomic_load_explicit(&f->type_info, memory_order_relaxed));
        atomic_store_explicit(&f->link, MV_INVALID_GFN, memory_order_relaxed);
        flags_set(f, MV_PGF_HEAD);
        owner_set(f, MV_OWNER_CACHED);
        c->mfn[have] = mfn;
        atomic_store_explicit(&c->n, have + 1, memory_order_relaxed);
        return;
    }

    uint64_t len = 1ull << order;
    for (uint64_t i = 1; i < len; i++)
        owner_set(&n->ft[idx + i], MV_OWNER_PENDING);
    mv_spin_lock(&n->lock);
    owner_set(&n->ft[idx], MV_OWNER_PENDING);
    bool due = pending_push(h, n, idx, order);
    uint64_t frames = 0;
    uint32_t list = due ? pending_detach(n, &frames) : MV_IDX_NIL;
    mv_spin_unlock(&n->lock);
    pending_process(h, n, list, frames);
}

/* ---- Trim, init, statistics ---------------------------------------------------------- */

int mv__heap_trim(mv_host_t *h, bool all_slots)
{
    uint64_t errors = atomic_load_explicit(&h->decommit_errors, memory_order_relaxed);
    uint32_t me = caller_slot(h);
    for (uint32_t s = 0; s < h->max_slots; s++) {
        if (!all_slots && s != me)
            continue;
        for (uint32_t i = 0; i < h->nr_nodes; i++)
            cache_spill(h, h->node[i], mv__slot_cache(h, s, i), h->cache_max);
    }
    for (uint32_t i = 0; i < h->nr_nodes; i++)
        pending_flush(h, h->node[i]);
    return atomic_load_explicit(&h->decommit_errors, memory_order_relaxed) != errors ? MV_EIO : 0;
}

int mv__heap_init(mv_host_t *h)
{
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        struct mv_heap_node *n = h->node[i];
        mv_spin_init(&n->lock, MV_LOCK_RANK_HEAP);
        for (unsigned o = 0; o <= MV_MAX_ORDER; o++)
            n->free_head[o] = MV_IDX_NIL;
        n->pending_head = MV_IDX_NIL;
        /* Carve the range into the largest naturally aligned blocks that fit. */
        mv_spin_lock(&n->lock);
        mv_mfn_t mfn = n->first_mfn, end = n->first_mfn + n->nr_frames;
        while (mfn < end) {
            unsigned order = MV_MAX_ORDER;
            while (order && ((mfn & ((1ull << order) - 1)) || mfn + (1ull << order) > end))
                order--;
            buddy_insert(n, (uint32_t)(mfn - n->first_mfn), order, true);
            mfn += 1ull << order;
        }
        mv_spin_unlock(&n->lock);
    }
    return 0;
}

void mv__heap_fini(mv_host_t *h)
{
    (void)h;
}

uint64_t mv__heap_cached(const mv_host_t *h, uint32_t node)
{
    uint64_t sum = 0;
    for (uint32_t s = 0; s < h->max_slots; s++)
        sum += atomic_load_explicit(&mv__slot_cache(h, s, node)->n, memory_order_relaxed);
    return sum;
}

void mv__heap_node_stats(mv_host_t *h, uint32_t node, struct mv_node_stats *ns)
{
    struct mv_heap_node *n = h->node[node];
    uint64_t cached = mv__heap_cached(h, node);
    memset(ns, 0, sizeof(*ns));
    mv_spin_lock(&n->lock);
    ns->first_mfn = n->first_mfn;
    ns->total = n->nr_frames;
    ns->free = n->free_frames;
    ns->pending = n->pending_frames + n->decommitting;
    for (unsigned o = 0; o <= MV_MAX_ORDER; o++)
        ns->free_by_order[o] = n->free_blocks[o];
    ns->committed = n->nr_frames - (n->free_frames - n->free_dirty);
    mv_spin_unlock(&n->lock);
    ns->cached = cached;
    uint64_t idle = ns->free + ns->pending + ns->cached;
    ns->allocated = idle <= ns->total ? ns->total - idle : 0;
    ns->alloc_fallback = atomic_load_explicit(&n->fallback_allocs, memory_order_relaxed);
}
