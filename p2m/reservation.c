/*
 * p2m/reservation.c - populate_physmap and decrease_reservation, the hypervisor side of the
 * balloon protocol, with Xen's names and meaning.
 *
 * Both take `count` extents of 2^order gfns (aligned, order up to 18) and work extent by
 * extent, each one all or nothing: a refused extent stops the call with *done = extents
 * completed and changes nothing of its own. After a slice of work (65536 frames) the call
 * returns MV_EAGAIN and the caller continues with the rest.
 *
 * Populate maps fresh frames ram_rw with the largest leaves the extent allows; each entry
 * holds its frame's allocation reference. Decrease takes each frame's count from exactly 1
 * (the p2m's own reference) to 0 before it unmaps anything: a frame anyone else holds -
 * a PV table type, a pin, a mapping, an in-flight hold - is refused with MV_EBUSY and stays
 * (XSA-252); taken to 0, nobody can take a new reference while the entry goes. The frames
 * are freed after invalidate_end and the unlock, and decommitted, so resident memory drops.
 */
#include "p2m-internal.h"

#define WORK_BUDGET 65536u

static int check_batch(mv_domain_t *d, const mv_gfn_t *gfns, uint64_t count, unsigned order,
                       uint64_t *done)
{
    if (!d || !p2m_of(d) || !done)
        return MV_EINVAL;
    *done = 0;
    if (order > MV_MAX_ORDER)
        return MV_EINVAL; /* XSA-31 */
    if (count && !gfns)
        return MV_EINVAL;
    if (count > (UINT64_MAX >> MV_PAGE_SHIFT) >> order)
        return MV_EOVERFLOW; /* XSA-212: count << order must not wrap */
    if (mv__domain_dying(d))
        return MV_ESRCH; /* XSA-410 */
    return 0;
}

static int check_extent(const struct mv_p2m *p, mv_gfn_t gfn, uint64_t n)
{
    if (gfn & (n - 1))
        return MV_EINVAL; /* XSA-388 */
    if (gfn >= p->max_gfn || p->max_gfn - gfn < n)
        return MV_ERANGE;
    return 0;
}

/* The leaf level an extent of `order` is written with, and how many leaves. */
static unsigned extent_level(unsigned order)
{
    return order >= 18 ? 2 : order >= 9 ? 1 : 0;
}

/*
 * Write an extent's leaves (lock held): RAM at mfn.., or nothing (mfn invalid). An extent
 * is aligned to its size and fits one table of its leaf level, so only its first leaf may
 * create or splinter tables: the cache holds p2m_write_tables(extent_level(order)) frames.
 */
static void write_extent(struct mv_p2m *p, mv_gfn_t gfn, unsigned order, mv_mfn_t mfn,
                         unsigned type)
{
    unsigned level = extent_level(order);
    uint64_t leaf = 1ull << (9 * level), n = 1ull << order;
    for (uint64_t off = 0; off < n; off += leaf) {
        mv_ept_t old, e = mfn == MV_INVALID_MFN
                              ? 0
                              : ept_leaf(mfn + off, level, type, MV_P2M_RWX,
                                         MV_P2M_MT_WB, false);
        mv__p2m_write_leaf(p, gfn + off, level, e, &old);
    }
}

/* Every gfn of the extent unmapped? (lock held, or - racy - in an epoch section) */
static bool extent_empty(const struct mv_p2m *p, mv_gfn_t gfn, uint64_t n)
{
    for (mv_gfn_t g = gfn; g < gfn + n;) {
        struct p2m_walk w;
        mv__p2m_walk(p->d->h, p, g, &w);
        if (w.e)
            return false;
        uint64_t span = 1ull << (9 * w.level);
        g = (g & ~(span - 1)) + span;
    }
    return true;
}

MV_API int mv_populate_physmap(mv_domain_t *d, const mv_gfn_t *gfns, uint64_t count,
                               unsigned order, uint32_t node, uint64_t *done)
{
    int rc = check_batch(d, gfns, count, order, done);
    if (rc)
        return rc;
    if (node != MV_NODE_ANY && node >= d->h->nr_nodes)
        return MV_ENODEV; /* XSA-231 */
    struct mv_p2m *p = p2m_of(d);
    uint64_t n = 1ull << order, work = 0;
    for (uint64_t i = 0; i < count; i++) {
        if (work >= WORK_BUDGET)
            return MV_EAGAIN;
        mv_gfn_t gfn = gfns[i];
        if ((rc = check_extent(p, gfn, n)))
            return rc;
        /* A lock-free look first, as a lookup (tables retired meanwhile stay readable). */
        uint32_t slot = mv__epoch_enter(d->h);
        bool empty = extent_empty(p, gfn, n);
        mv__epoch_exit(d->h, slot);
        if (!empty)
            return MV_EEXIST;
        mv_mfn_t mfn;
        if ((rc = mv__domain_alloc(d, order, node, MV_ALLOC_ZERO, &mfn)))
            return rc; /* MV_ENOSPC at the domain's maximum, MV_ENOMEM, MV_ESRCH */
        if ((rc = mv__p2m_lock_ready(p, gfn, n, p2m_write_tables(extent_level(order))))) {
            for (uint64_t j = 0; j < n; j++)
                mv__drop_allocation(d->h, mv__frame(d->h, mfn + j));
            return rc;
        }
        if (!extent_empty(p, gfn, n) || mv__domain_dying(d)) {
            rc = mv__domain_dying(d) ? MV_ESRCH : MV_EEXIST;
            mv_spin_unlock(&p->lock);
            for (uint64_t j = 0; j < n; j++)
                mv__drop_allocation(d->h, mv__frame(d->h, mfn + j));
            return rc;
        }
        mv__p2m_invalidate_start(p, gfn, n);
        /* The engine wrote the frames (zeroes): while logging they are dirty. */
        mv__p2m_mark_dirty(p, gfn, n);
        write_extent(p, gfn, order, mfn, p->logdirty ? MV_P2M_RAM_LOGDIRTY : MV_P2M_RAM_RW);
        for (uint64_t j = 0; j < n; j++)
            atomic_store_explicit(&mv__frame(d->h, mfn + j)->link, gfn + j,
                                  memory_order_release);
        mv__p2m_invalidate_end(p, gfn, n);
        p->populated += n;
        mv_spin_unlock(&p->lock);
        mv__epoch_reclaim(d->h, false);
        *done = i + 1;
        work += n;
    }
    return 0;
}

/* Check an extent for decrease and take each frame's count from 1 to 0 (lock held). */
static int claim_extent(struct mv_p2m *p, mv_gfn_t gfn, uint64_t n)
{
    mv_host_t *h = p->d->h;
    int rc = 0;
    mv_gfn_t g = gfn; /* [gfn, g) are claimed */
    while (g < gfn + n && !rc) {
        struct p2m_walk w;
        mv__p2m_walk(h, p, g, &w);
        uint64_t span = 1ull << (9 * w.level);
        mv_gfn_t base = g & ~(span - 1);
        mv_gfn_t hi = base + span < gfn + n ? base + span : gfn + n;
        unsigned type = ept_type(w.e);
        if (!w.e)
            rc = MV_ENOENT; /* XSA-277, XSA-430: nothing behind it */
        else if (type == MV_P2M_MMIO_DIRECT || (w.e & EPT_SPECIAL))
            rc = MV_EPERM; /* XSA-378, XSA-507 */
        else if (type == MV_P2M_RAM_SHARED || !p2m_is_ram(type))
            rc = MV_EOPNOTSUPP;
        while (!rc && g < hi) {
            struct mv_frame *f = mv__frame(h, ept_mfn(w.e) + (g - base));
            uint32_t one = 1;
            if (atomic_compare_exchange_strong_explicit(&f->count, &one, 0,
                                                        memory_order_acq_rel,
                                                        memory_order_relaxed))
                g++;
            else
                rc = MV_EBUSY; /* XSA-252: someone else holds it */
        }
    }
    if (rc) {
        /* Give back what was claimed. */
        for (mv_gfn_t x = gfn; x < g; x++) {
            struct p2m_walk w;
            mv__p2m_walk(h, p, x, &w);
            uint64_t span = 1ull << (9 * w.level);
            struct mv_frame *f = mv__frame(h, ept_mfn(w.e) + (x & (span - 1)));
            atomic_store_explicit(&f->count, 1, memory_order_release);
        }
    }
    return rc;
}

MV_API int mv_decrease_reservation(mv_domain_t *d, const mv_gfn_t *gfns, uint64_t count,
                                   unsigned order, uint64_t *done)
{
    int rc = check_batch(d, gfns, count, order, done);
    if (rc)
        return rc;
    struct mv_p2m *p = p2m_of(d);
    mv_host_t *h = d->h;
    uint64_t n = 1ull << order, work = 0;
    for (uint64_t i = 0; i < count; i++) {
        if (work >= WORK_BUDGET)
            return MV_EAGAIN;
        mv_gfn_t gfn = gfns[i];
        if ((rc = check_extent(p, gfn, n)))
            return rc;
        if ((rc = mv__p2m_lock_cache(p, p2m_write_tables(extent_level(order)))))
            return rc;
        if ((rc = claim_extent(p, gfn, n))) {
            mv_spin_unlock(&p->lock);
            return rc;
        }
        /*
         * Chain the claimed frames through their m2p words (their counts are 0 and their
         * entries are about to go: nobody else reads them), so that they can be freed
         * after the unlock without allocating anything under it.
         */
        mv_mfn_t chain = MV_INVALID_MFN, first = MV_INVALID_MFN;
        bool block = true; /* frames first .. first + n - 1, aligned: freed as one block */
        for (mv_gfn_t g = gfn; g < gfn + n;) {
            struct p2m_walk w;
            mv__p2m_walk(h, p, g, &w);
            uint64_t span = 1ull << (9 * w.level);
            mv_gfn_t base = g & ~(span - 1);
            mv_gfn_t hi = base + span < gfn + n ? base + span : gfn + n;
            for (; g < hi; g++) {
                mv_mfn_t m = ept_mfn(w.e) + (g - base);
                if (g == gfn)
                    first = m;
                block &= m == first + (g - gfn);
                atomic_store_explicit(&mv__frame(h, m)->link, chain, memory_order_relaxed);
                chain = m;
            }
        }
        mv__p2m_invalidate_start(p, gfn, n);
        write_extent(p, gfn, order, MV_INVALID_MFN, MV_P2M_INVALID);
        mv__p2m_flush_gphys(p);
        mv__p2m_invalidate_end(p, gfn, n);
        p->decreased += n;
        mv_spin_unlock(&p->lock);
        if (block && !(first & (n - 1))) {
            mv__frame_release_block(h, first, order);
            chain = MV_INVALID_MFN;
        }
        while (chain != MV_INVALID_MFN) {
            struct mv_frame *f = mv__frame(h, chain);
            chain = atomic_load_explicit(&f->link, memory_order_relaxed);
            atomic_store_explicit(&f->link, MV_INVALID_GFN, memory_order_relaxed);
            mv__frame_release(h, f);
        }
        mv__epoch_reclaim(h, false);
        *done = i + 1;
        work += n;
    }
    return 0;
}
