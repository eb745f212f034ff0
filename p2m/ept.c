/*
 * p2m/ept.c - the radix of EPT-format tables: walking, writing leaves, splintering,
 * table frames, statistics and the listener protocol.
 *
 * Readers walk with atomic loads and no lock (mv_p2m_lookup, inside an epoch section);
 * writers hold the p2m lock. A new table is filled completely before one release store
 * publishes it, so a reader sees either the old leaf or the finished table, never a torn
 * state. Table frames come from the domain's table cache, which the lock guards and which
 * is refilled with the lock dropped (nothing is allocated under it); tables leave the tree
 * through the epoch scheme, never straight to the heap.
 */
#include "p2m-internal.h"

/* ---- The table cache --------------------------------------------------------------------
 *
 * KVM fills its MMU memory caches before it takes mmu_lock; Xen's p2m takes its tables from
 * the paging pool under the paging lock. We do both: the cache is per domain, shared by
 * every mutator, and guarded by the p2m lock; it is refilled from the heap with the p2m lock
 * dropped. It holds loose frames (p->topup[]) and the rest of a chunk of contiguous frames
 * (p->pool_next, p->pool_left) that grows with the tree (up to 2 MiB), so that a big guest's
 * tables sit together.
 *
 * A mutator takes the lock through mv__p2m_lock_cache() (p2m-internal.h), which returns
 * only once the cache holds what the mutator's next step may take (its worst case, at most
 * P2M_STEP_TABLES). When it does not (mv__p2m_lock_cache_refill), the caller's thread allocates a batch of that many frames with no lock
 * held, takes the lock, moves the batch in and - if the cache was still short - carries on
 * with the lock held: frames it just added cannot have been taken meanwhile, so a refill
 * never has to be repeated for want of frames (no livelock between refillers). Frames that
 * do not fit (another thread refilled first) go back to the heap after the unlock.
 */

/* Frames a refill brings (or a drain takes away), held by one thread with no lock. */
struct p2m_batch {
    mv_mfn_t loose[P2M_LOOSE];
    unsigned nr;
    mv_mfn_t next;     /* the rest of the last chunk allocated */
    uint64_t left;
};

/* The next chunk: about a quarter of the tree's size, 1 to 512 frames. */
static unsigned pool_order(const struct mv_p2m *p)
{
    uint64_t tables = atomic_load_explicit(&p->table_frames, memory_order_relaxed);
    unsigned order = 0;
    while (order < 9 && (4ull << order) <= tables)
        order++;
    return order;
}

/* Allocate `need` loose frames into b, chunk by chunk (no lock held). */
static int batch_fill(struct mv_p2m *p, struct p2m_batch *b, unsigned need)
{
    mv_domain_t *d = p->d;
    MV_ASSERT2(!mv__lock_order_held(&p->lock)); /* the heap is never entered under it */
    while (b->nr < need) {
        if (!b->left) {
            unsigned order = pool_order(p);
            mv_mfn_t m;
            int rc = mv__heap_alloc(d->h, order, d->node_affinity, MV_ALLOC_ZERO,
                                    MV_OWNER_TOPUP, &m);
            if (rc)
                return rc;
            /* Each frame its own block: tables leave the tree one by one. */
            for (uint64_t i = 0; i < (1ull << order); i++)
                atomic_store_explicit(&mv__frame(d->h, m + i)->flags, mv__pgf_head(0),
                                      memory_order_relaxed);
            b->next = m;
            b->left = 1ull << order;
            atomic_fetch_add_explicit(&d->overhead_pages, b->left, memory_order_relaxed);
        }
        b->loose[b->nr++] = b->next++;
        b->left--;
    }
    return 0;
}

/*
 * Move a batch into the cache (lock held); what does not fit stays in b. The batch's chunk
 * replaces the cache's when the cache's rest fits among the loose frames. When the cache
 * holds fewer than need frames and b holds need loose ones, everything fits: the rest of
 * the cache's chunk and its loose frames are fewer than need, so the loose frames end
 * fewer than 2 * need <= P2M_LOOSE.
 */
static void batch_merge(struct mv_p2m *p, struct p2m_batch *b)
{
    mv__assert_held(&p->lock);
    if (b->left && p->nr_topup + p->pool_left <= P2M_LOOSE) {
        while (p->pool_left) {
            p->topup[p->nr_topup++] = p->pool_next++;
            p->pool_left--;
        }
        p->pool_next = b->next;
        p->pool_left = b->left;
        b->left = 0;
    }
    while (b->nr && p->nr_topup < P2M_LOOSE)
        p->topup[p->nr_topup++] = b->loose[--b->nr];
}

static void give_back(struct mv_p2m *p, mv_mfn_t m)
{
    struct mv_frame *f = mv__frame(p->d->h, m);
    atomic_store_explicit(&f->owner, MV_OWNER_PENDING, memory_order_release);
    mv__heap_free(p->d->h, m, 0);
    atomic_fetch_sub_explicit(&p->d->overhead_pages, 1, memory_order_relaxed);
}

/* Return a batch's frames to the heap (no lock held). */
static void batch_give_back(struct mv_p2m *p, struct p2m_batch *b)
{
    while (b->nr)
        give_back(p, b->loose[--b->nr]);
    while (b->left) {
        give_back(p, b->next++);
        b->left--;
    }
}

int mv__p2m_lock_cache_refill(struct mv_p2m *p, unsigned need)
{
    MV_ASSERT(need <= P2M_STEP_TABLES);
    for (;;) {
        struct p2m_batch b = {.nr = 0};
        int rc = batch_fill(p, &b, need);
        mv_spin_lock(&p->lock);
        batch_merge(p, &b);
        p->cache_refills++;
        bool enough = mv__p2m_cache_has(p, need);
        if (enough && !b.nr && !b.left)
            return 0; /* with the lock held: nobody took what we brought */
        p->cache_surplus += b.nr || b.left;
        mv_spin_unlock(&p->lock);
        batch_give_back(p, &b);
        if (!enough && rc)
            return rc;
        /* Another thread refilled it first: look again. */
        mv_spin_lock(&p->lock);
        if (mv__p2m_cache_has(p, need))
            return 0;
        mv_spin_unlock(&p->lock);
    }
}

void mv__p2m_topup_drain(struct mv_p2m *p)
{
    struct p2m_batch b = {.nr = 0};
    mv_spin_lock(&p->lock);
    while (p->nr_topup)
        b.loose[b.nr++] = p->topup[--p->nr_topup];
    b.next = p->pool_next;
    b.left = p->pool_left;
    p->pool_left = 0;
    mv_spin_unlock(&p->lock);
    batch_give_back(p, &b);
}

/* A zeroed table frame from the cache, now engine-internal (lock held). */
static mv_mfn_t take_table(struct mv_p2m *p)
{
    mv__assert_held(&p->lock);
    mv_mfn_t m;
    if (p->nr_topup) {
        m = p->topup[--p->nr_topup];
    } else {
        MV_ASSERT(p->pool_left > 0); /* the caller made sure, under the lock */
        m = p->pool_next++;
        p->pool_left--;
    }
    atomic_store_explicit(&mv__frame(p->d->h, m)->owner, MV_OWNER_INTERNAL, memory_order_release);
    atomic_fetch_add_explicit(&p->table_frames, 1, memory_order_relaxed);
    return m;
}

/* ---- Leaves ------------------------------------------------------------------------------ */

void mv__p2m_account(struct mv_p2m *p, mv_ept_t e, unsigned level, int sign)
{
    if (!e || level > 2)
        return;
    unsigned type = ept_type(e);
    uint64_t pages = 1ull << (9 * level);
    if (sign > 0) {
        p->leaves[level]++;
        p->pages_by_type[type] += pages;
    } else {
        p->leaves[level]--;
        p->pages_by_type[type] -= pages;
    }
}

/* Replace the superpage leaf at *slot (level lv) by a table of 512 leaves one level down. */
static mv_ept_t splinter(struct mv_p2m *p, mv_ept_t *slot, unsigned lv, mv_ept_t leaf)
{
    mv_mfn_t tm = take_table(p);
    mv_ept_t *t = ept_va(p->d->h, tm);
    unsigned child = lv - 1;
    mv_ept_t base = leaf & ~(EPT_ADDR_MASK | EPT_LEAF);
    if (child)
        base |= EPT_LEAF;
    for (unsigned i = 0; i < EPT_ENTRIES; i++) {
        mv_mfn_t m = ept_mfn(leaf) + ((mv_mfn_t)i << (9 * child));
        t[i] = base | ((m << MV_PAGE_SHIFT) & EPT_ADDR_MASK);
    }
    mv__p2m_account(p, leaf, lv, -1);
    for (unsigned i = 0; i < EPT_ENTRIES; i++)
        mv__p2m_account(p, t[i], child, +1);
    p->splinters++;
    mv_ept_t table = ept_table(tm);
    ept_write(slot, table); /* publish the finished table in one store */
    return table;
}

/* Unaccount and retire a whole subtree that a leaf is replacing (its leaves are already
 * unmapped by the caller: only invalid entries remain). */
static void retire_subtree(struct mv_p2m *p, mv_mfn_t table, unsigned lv)
{
    mv_ept_t *t = ept_va(p->d->h, table);
    for (unsigned i = 0; i < EPT_ENTRIES; i++) {
        mv_ept_t e = t[i];
        if (ept_is_table(e, lv))
            retire_subtree(p, ept_mfn(e), lv - 1);
        else
            mv__p2m_account(p, e, lv, -1);
    }
    atomic_fetch_sub_explicit(&p->table_frames, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&p->d->overhead_pages, 1, memory_order_relaxed);
    mv__epoch_retire(p->d->h, table);
}

void mv__p2m_write_leaf(struct mv_p2m *p, mv_gfn_t gfn, unsigned level, mv_ept_t e,
                        mv_ept_t *old)
{
    mv__assert_held(&p->lock);
    mv_host_t *h = p->d->h;
    mv_ept_t *t = ept_va(h, p->root);
    for (unsigned lv = P2M_LEVELS - 1; lv > level; lv--) {
        mv_ept_t *slot = &t[(gfn >> (9 * lv)) & (EPT_ENTRIES - 1)];
        mv_ept_t cur = ept_read(slot);
        if (!ept_is_table(cur, lv)) {
            if (cur)
                cur = splinter(p, slot, lv, cur);
            else {
                cur = ept_table(take_table(p));
                ept_write(slot, cur);
            }
        }
        t = ept_va(h, ept_mfn(cur));
    }
    mv_ept_t *slot = &t[(gfn >> (9 * level)) & (EPT_ENTRIES - 1)];
    mv_ept_t prev = ept_read(slot);
    ept_write(slot, e);
    if (ept_is_table(prev, level))
        retire_subtree(p, ept_mfn(prev), level - 1);
    else
        mv__p2m_account(p, prev, level, -1);
    mv__p2m_account(p, e, level, +1);
    *old = ept_is_table(prev, level) ? 0 : prev;
}

void mv__p2m_splinter_at(struct mv_p2m *p, mv_gfn_t gfn, unsigned level)
{
    mv__assert_held(&p->lock);
    mv_host_t *h = p->d->h;
    mv_ept_t *t = ept_va(h, p->root);
    for (unsigned lv = P2M_LEVELS - 1; lv > level; lv--) {
        mv_ept_t e = ept_read(&t[(gfn >> (9 * lv)) & (EPT_ENTRIES - 1)]);
        MV_ASSERT(ept_is_table(e, lv));
        t = ept_va(h, ept_mfn(e));
    }
    mv_ept_t *slot = &t[(gfn >> (9 * level)) & (EPT_ENTRIES - 1)];
    mv_ept_t e = ept_read(slot);
    MV_ASSERT(level > 0 && e && !ept_is_table(e, level));
    splinter(p, slot, level, e);
}

void mv__p2m_invalidate_start(struct mv_p2m *p, mv_gfn_t first, uint64_t count)
{
    mv__assert_held(&p->lock);
    atomic_fetch_add_explicit(&p->in_progress, 1, memory_order_seq_cst);
    for (uint32_t i = 0; i < p->nr_listeners; i++)
        if (p->listeners[i].invalidate_start)
            p->listeners[i].invalidate_start(p->listeners[i].ctx, p->d, first, count);
}

void mv__p2m_invalidate_end(struct mv_p2m *p, mv_gfn_t first, uint64_t count)
{
    mv__assert_held(&p->lock);
    atomic_fetch_add_explicit(&p->seq, 1, memory_order_seq_cst);
    atomic_fetch_sub_explicit(&p->in_progress, 1, memory_order_seq_cst);
    for (uint32_t i = 0; i < p->nr_listeners; i++)
        if (p->listeners[i].invalidate_end)
            p->listeners[i].invalidate_end(p->listeners[i].ctx, p->d, first, count);
}

void mv__p2m_flush_gphys(struct mv_p2m *p)
{
    mv_domain_t *d = p->d;
    if (d->type != MV_DOMAIN_HVM)
        return; /* a PV guest's hardware never walks the p2m */
    struct mv_flush_request req = {.domid = (mv_domid_t)d->domid,
                                   .scope = MV_FLUSH_GUEST_PHYS,
                                   .nr_vcpus = d->nr_vcpus};
    for (uint32_t i = 0; i < d->nr_vcpus; i++)
        req.vcpu_mask[i / 64] |= 1ull << (i % 64);
    mv__flush(d->h, &req);
}

static void free_tree(struct mv_p2m *p, mv_mfn_t table, unsigned lv)
{
    mv_ept_t *t = ept_va(p->d->h, table);
    for (unsigned i = 0; lv > 0 && i < EPT_ENTRIES; i++)
        if (ept_is_table(t[i], lv))
            free_tree(p, ept_mfn(t[i]), lv - 1);
    atomic_fetch_sub_explicit(&p->table_frames, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&p->d->overhead_pages, 1, memory_order_relaxed);
    mv__epoch_retire(p->d->h, table);
}

void mv__p2m_free_tables(struct mv_p2m *p)
{
    if (p->root == MV_INVALID_MFN)
        return;
    free_tree(p, p->root, P2M_LEVELS - 1);
    p->root = MV_INVALID_MFN;
    mv__epoch_reclaim(p->d->h, false);
}
