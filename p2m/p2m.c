/*
 * p2m/p2m.c - the p2m module: per-domain setup and teardown, lookups, set_entry, type
 * changes over ranges, mmio and special pages, listeners and statistics.
 *
 * Every mutator follows one shape (STYLE.md 6, validate then commit):
 *   check the arguments and the frames -> take the p2m lock with the table cache holding
 *   what the step may take (refilled with the lock dropped: mv__p2m_lock_cache) -> re-check
 *   what may have raced -> invalidate_start -> write entries, move m2p back-pointers ->
 *   flush guest-physical translations (HAP) -> invalidate_end -> unlock -> free what left
 *   (frames, retired tables) with no lock held.
 * The cache is shared by the domain's mutators, so it is checked under the lock, never
 * before it; with it holding the step's worst case the commit phase cannot fail.
 */
#include <stdlib.h>

#include "p2m-internal.h"

#define TEARDOWN_BUDGET 65536u
#define TYPE_RANGE_BUDGET 65536u

/* ---- Module hooks ------------------------------------------------------------------- */

static int p2m_domain_init(mv_domain_t *d)
{
    mv_host_t *h = d->h;
    struct mv_p2m *p = mv__meta_alloc(h, sizeof(*p));
    if (!p)
        return MV_ENOMEM;
    p->d = d;
    mv_spin_init(&p->lock, MV_LOCK_RANK_P2M);
    unsigned bits = d->phys_bits < 48 ? d->phys_bits : 48;
    p->max_gfn = 1ull << (bits - MV_PAGE_SHIFT);
    int rc = mv__heap_alloc(h, 0, d->node_affinity, MV_ALLOC_ZERO, MV_OWNER_INTERNAL, &p->root);
    if (rc) {
        mv__meta_free(h, p, sizeof(*p));
        return rc;
    }
    atomic_init(&p->table_frames, 1);
    atomic_fetch_add_explicit(&d->overhead_pages, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&d->overhead_bytes, sizeof(*p), memory_order_relaxed);
    d->mod[MV_MOD_P2M] = p;
    return 0;
}

/*
 * Unmap every RAM leaf from the cursor on, returning the frames' allocation references,
 * within a budget; then free the tables. MV_EAGAIN to be called again.
 */
static int p2m_domain_teardown(mv_domain_t *d)
{
    struct mv_p2m *p = p2m_of(d);
    mv_host_t *h = d->h;
    uint64_t budget = TEARDOWN_BUDGET;
    while (!p->frames_released) {
        if (p->teardown_gfn >= p->max_gfn) {
            p->frames_released = true;
            break;
        }
        if (!budget)
            return MV_EAGAIN;
        mv_spin_lock(&p->lock);
        struct p2m_walk w;
        mv__p2m_walk(h, p, p->teardown_gfn, &w);
        uint64_t span = 1ull << (9 * w.level);
        mv_gfn_t base = p->teardown_gfn & ~(span - 1);
        mv_mfn_t first = ept_mfn(w.e);
        bool ram = w.e && p2m_is_ram(ept_type(w.e));
        if (w.e) {
            mv_ept_t old;
            mv__p2m_invalidate_start(p, base, span);
            mv__p2m_write_leaf(p, base, w.level, 0, &old);
            mv__p2m_invalidate_end(p, base, span);
        }
        mv_spin_unlock(&p->lock);
        if (ram) {
            /* Frames only the p2m held go back as one block (one decommit); the rest one
             * by one, each when its last holder lets go. */
            uint64_t claimed = 0;
            while (claimed < span) {
                uint32_t one = 1;
                if (!atomic_compare_exchange_strong_explicit(&mv__frame(h, first + claimed)->count,
                                                             &one, 0, memory_order_acq_rel,
                                                             memory_order_relaxed))
                    break;
                claimed++;
            }
            if (claimed == span) {
                mv__frame_release_block(h, first, 9 * w.level);
            } else {
                for (uint64_t i = 0; i < claimed; i++)
                    atomic_store_explicit(&mv__frame(h, first + i)->count, 1,
                                          memory_order_release);
                for (uint64_t i = 0; i < span; i++) {
                    struct mv_frame *f = mv__frame(h, first + i);
                    atomic_store_explicit(&f->link, MV_INVALID_GFN, memory_order_relaxed);
                    mv__drop_allocation(h, f);
                }
            }
        }
        /* Work is entries visited and frames returned, not guest address space. */
        uint64_t cost = 1 + (ram ? span : 0);
        budget -= budget < cost ? budget : cost;
        p->teardown_gfn = base + span;
    }
    mv__p2m_topup_drain(p);
    mv__p2m_free_tables(p);
    mv__p2m_ld_free(p);
    return 0;
}

static void p2m_domain_free(mv_domain_t *d)
{
    struct mv_p2m *p = p2m_of(d);
    if (!p)
        return;
    mv__p2m_topup_drain(p);
    mv__p2m_free_tables(p);
    mv__p2m_ld_free(p);
    mv__meta_free(d->h, p, sizeof(*p));
    d->mod[MV_MOD_P2M] = NULL;
}

void mv__p2m_audit(mv_host_t *h, struct mv_audit_ctx *ac);

const struct mv_module_ops mv__p2m_module = {
    .name = "p2m",
    .domain_init = p2m_domain_init,
    .domain_teardown = p2m_domain_teardown,
    .domain_free = p2m_domain_free,
    .recount = NULL,
    .audit = mv__p2m_audit,
};

/* ---- Lookups ------------------------------------------------------------------------- */

/* A leaf entry (or nothing) as the public struct. */
static void decode_entry(mv_ept_t e, unsigned lv, mv_gfn_t gfn, struct mv_p2m_entry *out)
{
    if (!e || lv > 2) {
        *out = (struct mv_p2m_entry){.mfn = MV_INVALID_MFN, .type = MV_P2M_INVALID};
        return;
    }
    out->mfn = ept_mfn(e) + (gfn & ((1ull << (9 * lv)) - 1));
    out->type = ept_type(e);
    out->access = (unsigned)(e & EPT_RWX);
    out->order = 9 * lv;
    out->mtype = (unsigned)((e & EPT_MT_MASK) >> EPT_MT_SHIFT);
    out->special = (e & EPT_SPECIAL) != 0;
}

MV_API int mv_p2m_lookup(mv_domain_t *d, mv_gfn_t gfn, struct mv_p2m_entry *out)
{
    if (MV_UNLIKELY(!d || !out))
        return MV_EINVAL;
    struct mv_p2m *p = p2m_of(d);
    if (MV_UNLIKELY(!p || gfn >= p->max_gfn || p->root == MV_INVALID_MFN))
        return MV_ERANGE;
    mv_host_t *h = d->h;
    uint32_t slot = mv__epoch_enter(h);
    struct p2m_walk w;
    mv__p2m_walk(h, p, gfn, &w);
    mv__epoch_exit(h, slot);
    decode_entry(w.e, w.level, gfn, out);
    return 0;
}

#define LOOKUP_GROUP 16u

MV_API int mv_p2m_lookup_many(mv_domain_t *d, const mv_gfn_t *gfns, size_t n,
                              struct mv_p2m_entry *out)
{
    if (!d || (n && (!gfns || !out)))
        return MV_EINVAL;
    struct mv_p2m *p = p2m_of(d);
    if (!p || p->root == MV_INVALID_MFN)
        return MV_ERANGE;
    for (size_t i = 0; i < n; i++)
        if (gfns[i] >= p->max_gfn)
            return MV_ERANGE;
    mv_host_t *h = d->h;
    uint32_t slot = mv__epoch_enter(h);
    for (size_t base = 0; base < n; base += LOOKUP_GROUP) {
        size_t m = n - base < LOOKUP_GROUP ? n - base : LOOKUP_GROUP;
        const mv_ept_t *t[LOOKUP_GROUP];
        mv_ept_t e[LOOKUP_GROUP];
        unsigned lv[LOOKUP_GROUP];
        for (size_t i = 0; i < m; i++) {
            t[i] = ept_va(h, p->root);
            lv[i] = P2M_LEVELS;
        }
        /* Level by level across the group: the loads of one level are independent. */
        for (unsigned level = P2M_LEVELS; level-- > 0;) {
            for (size_t i = 0; i < m; i++) {
                if (lv[i] != level + 1)
                    continue; /* finished at a higher level */
                mv_gfn_t g = gfns[base + i];
                e[i] = ept_read(&t[i][(g >> (9 * level)) & (EPT_ENTRIES - 1)]);
                if (ept_is_table(e[i], level)) {
                    t[i] = ept_va(h, ept_mfn(e[i]));
                    lv[i] = level;
                } else {
                    lv[i] = level + 100; /* done, at this level */
                }
            }
        }
        for (size_t i = 0; i < m; i++)
            decode_entry(e[i], lv[i] - 100, gfns[base + i], &out[base + i]);
    }
    mv__epoch_exit(h, slot);
    return 0;
}

MV_API mv_paddr_t mv_p2m_root(const mv_domain_t *d)
{
    struct mv_p2m *p = d ? p2m_of(d) : NULL;
    return p && p->root != MV_INVALID_MFN ? p->root << MV_PAGE_SHIFT : 0;
}

/* ---- set_entry ------------------------------------------------------------------------ */

static int check_level(unsigned order, unsigned *level)
{
    if (order != 0 && order != 9 && order != 18)
        return MV_EINVAL;
    *level = order / 9;
    return 0;
}

/* RAM frames for a mapping at gfn: the domain's, allocated, unmapped (or mapped here). */
static int check_ram_frames(mv_domain_t *d, mv_mfn_t mfn, uint64_t n, mv_gfn_t gfn)
{
    for (uint64_t i = 0; i < n; i++) {
        struct mv_frame *f;
        int rc = mv__domain_frame(d, mfn + i, &f);
        if (rc)
            return rc;
        if (!(atomic_load_explicit(&f->flags, memory_order_acquire) & MV_PGF_ALLOCATED))
            return MV_EPERM;
        uint64_t m2p = atomic_load_explicit(&f->link, memory_order_acquire);
        if (m2p != MV_INVALID_GFN && m2p != gfn + i)
            return MV_EBUSY;
    }
    return 0;
}

/* mmio must name machine addresses outside RAM. */
static bool overlaps_ram(const mv_host_t *h, mv_mfn_t mfn, uint64_t n)
{
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        const struct mv_heap_node *nd = h->node[i];
        if (mfn < nd->first_mfn + nd->nr_frames && nd->first_mfn < mfn + n)
            return true;
    }
    return false;
}

/* Any special entry in [gfn, gfn + n)? (lock held) */
static bool range_has_special(const struct mv_p2m *p, mv_gfn_t gfn, uint64_t n)
{
    for (mv_gfn_t g = gfn; g < gfn + n;) {
        struct p2m_walk w;
        mv__p2m_walk(p->d->h, p, g, &w);
        if (w.e & EPT_SPECIAL)
            return true;
        uint64_t span = 1ull << (9 * w.level);
        g = (g & ~(span - 1)) + span;
    }
    return false;
}

bool mv__p2m_unlink_range(struct mv_p2m *p, mv_gfn_t gfn, uint64_t n)
{
    bool any = false;
    mv_host_t *h = p->d->h;
    for (mv_gfn_t g = gfn; g < gfn + n;) {
        struct p2m_walk w;
        mv__p2m_walk(h, p, g, &w);
        uint64_t span = 1ull << (9 * w.level);
        mv_gfn_t base = g & ~(span - 1);
        mv_gfn_t lo = base > gfn ? base : gfn, hi = base + span < gfn + n ? base + span : gfn + n;
        if (w.e) {
            any = true;
            if (p2m_is_ram(ept_type(w.e)))
                for (mv_gfn_t x = lo; x < hi; x++)
                    atomic_store_explicit(&mv__frame(h, ept_mfn(w.e) + (x - base))->link,
                                          MV_INVALID_GFN, memory_order_release);
        }
        g = hi;
    }
    return any;
}

/*
 * mv__p2m_lock_ready found the log-dirty bitmap not ready for [gfn, gfn + n): allocate its
 * chunks with no lock held and take the lock again. Logging may start meanwhile, so a few
 * rounds may be needed (bounded: MV_EBUSY).
 */
int mv__p2m_lock_ready_prepare(struct mv_p2m *p, mv_gfn_t gfn, uint64_t n, unsigned tables)
{
    for (int attempt = 0; attempt < 4; attempt++) {
        int rc = mv__p2m_ld_prepare(p, gfn, n);
        if (!rc)
            rc = mv__p2m_lock_cache(p, tables);
        if (rc)
            return rc;
        if (mv__p2m_ld_ready(p, gfn, n))
            return 0;
        mv_spin_unlock(&p->lock);
    }
    return MV_EBUSY;
}

/* The commit of set_entry and friends: lock held, the cache holding
 * p2m_write_tables(level) frames (the clearing below takes none), checks done. */
static void commit_leaf(struct mv_p2m *p, mv_gfn_t gfn, unsigned level, mv_ept_t e)
{
    uint64_t n = 1ull << (9 * level);
    mv__p2m_invalidate_start(p, gfn, n);
    bool had = mv__p2m_unlink_range(p, gfn, n);
    mv_ept_t old;
    /* Clear the range leaf by leaf first when it holds tables, so none is replaced while
     * it still maps something. */
    if (level) {
        for (mv_gfn_t g = gfn; g < gfn + n;) {
            struct p2m_walk w;
            mv__p2m_walk(p->d->h, p, g, &w);
            uint64_t span = 1ull << (9 * w.level);
            if (w.level < level && w.e)
                mv__p2m_write_leaf(p, g & ~(span - 1), w.level, 0, &old);
            g = (g & ~(span - 1)) + span;
        }
    }
    mv__p2m_write_leaf(p, gfn, level, e, &old);
    if (e && p2m_is_ram(ept_type(e)))
        for (uint64_t i = 0; i < n; i++)
            atomic_store_explicit(&mv__frame(p->d->h, ept_mfn(e) + i)->link, gfn + i,
                                  memory_order_release);
    if (had)
        mv__p2m_flush_gphys(p);
    mv__p2m_invalidate_end(p, gfn, n);
}

MV_API int mv_p2m_set_entry(mv_domain_t *d, mv_gfn_t gfn, mv_mfn_t mfn, unsigned order,
                            unsigned type, unsigned access)
{
    unsigned level;
    if (!d || !p2m_of(d))
        return MV_EINVAL;
    struct mv_p2m *p = p2m_of(d);
    int rc = check_level(order, &level);
    if (rc)
        return rc;
    uint64_t n = 1ull << order;
    if (type >= MV_P2M_NR_TYPES || (access & ~MV_P2M_RWX))
        return MV_EINVAL;
    if (type == MV_P2M_RAM_SHARED || type == MV_P2M_POD || type == MV_P2M_PAGED_OUT)
        return MV_EOPNOTSUPP; /* through their own modules */
    if (gfn & (n - 1))
        return MV_EINVAL;
    if (gfn >= p->max_gfn || p->max_gfn - gfn < n)
        return MV_ERANGE;
    if (mv__domain_dying(d))
        return MV_ESRCH;
    if (type != MV_P2M_INVALID && (mfn & (n - 1)))
        return MV_EINVAL;
    if (p2m_is_ram(type) && (rc = check_ram_frames(d, mfn, n, gfn)))
        return rc;
    if (type == MV_P2M_MMIO_DIRECT && (mfn > (EPT_ADDR_MASK >> MV_PAGE_SHIFT) - n ||
                                       overlaps_ram(d->h, mfn, n)))
        return MV_EPERM;
    if ((rc = mv__p2m_lock_ready(p, gfn, n, p2m_write_tables(level))))
        return rc;
    if ((p2m_is_ram(type) && (rc = check_ram_frames(d, mfn, n, gfn))) ||
        (!rc && range_has_special(p, gfn, n) && (rc = MV_EBUSY))) {
        mv_spin_unlock(&p->lock);
        return rc;
    }
    /* While logging, nothing becomes writable without a fault; new content is dirty. */
    if (p->logdirty && type == MV_P2M_RAM_RW && (access & MV_P2M_W))
        type = MV_P2M_RAM_LOGDIRTY;
    if (p2m_is_ram(type))
        mv__p2m_mark_dirty(p, gfn, n);
    commit_leaf(p, gfn, level,
                ept_leaf(mfn, level, type, access, MV_P2M_MT_UC, false));
    mv_spin_unlock(&p->lock);
    mv__epoch_reclaim(d->h, false);
    return 0;
}

MV_API int mv_p2m_map_mmio(mv_domain_t *d, mv_gfn_t gfn, mv_mfn_t mfn, uint64_t count,
                           unsigned mtype)
{
    if (!d || !p2m_of(d) || !count)
        return MV_EINVAL;
    if (mtype != MV_P2M_MT_UC && mtype != MV_P2M_MT_WC && mtype != MV_P2M_MT_WB)
        return MV_EINVAL;
    struct mv_p2m *p = p2m_of(d);
    if (gfn >= p->max_gfn || p->max_gfn - gfn < count)
        return MV_ERANGE;
    if (mv__domain_dying(d))
        return MV_ESRCH;
    if (mfn > (EPT_ADDR_MASK >> MV_PAGE_SHIFT) - count || overlaps_ram(d->h, mfn, count))
        return MV_EPERM;
    /* Refuse over RAM or special gfns: those leave through their own operations. */
    for (uint64_t i = 0; i < count; i++) {
        struct mv_p2m_entry e;
        mv_p2m_lookup(d, gfn + i, &e);
        if (e.type != MV_P2M_INVALID && e.type != MV_P2M_MMIO_DIRECT)
            return MV_EBUSY;
    }
    for (uint64_t i = 0; i < count; i++) {
        int rc = mv__p2m_lock_cache(p, p2m_write_tables(0));
        if (rc)
            return rc; /* the gfns mapped so far stay mapped; none is half-mapped */
        commit_leaf(p, gfn + i, 0,
                    ept_leaf(mfn + i, 0, MV_P2M_MMIO_DIRECT, MV_P2M_RWX, mtype, false));
        mv_spin_unlock(&p->lock);
    }
    mv__epoch_reclaim(d->h, false);
    return 0;
}

MV_API int mv_p2m_set_special(mv_domain_t *d, mv_gfn_t gfn, int special)
{
    if (!d || !p2m_of(d) || (special != 0 && special != 1))
        return MV_EINVAL;
    struct mv_p2m *p = p2m_of(d);
    if (gfn >= p->max_gfn)
        return MV_ERANGE;
    if (mv__domain_dying(d))
        return MV_ESRCH;
    int rc = mv__p2m_lock_cache(p, p2m_write_tables(0));
    if (rc)
        return rc;
    struct p2m_walk w;
    mv__p2m_walk(d->h, p, gfn, &w);
    if (!w.e || !p2m_is_ram(ept_type(w.e)) || ept_type(w.e) == MV_P2M_RAM_SHARED) {
        mv_spin_unlock(&p->lock);
        return w.e ? MV_EPERM : MV_ENOENT;
    }
    /* Special pages are 4 KiB entries: splinter a superpage around it first. */
    uint64_t span = 1ull << (9 * w.level);
    mv_mfn_t mfn = ept_mfn(w.e) + (gfn & (span - 1));
    mv_ept_t e = (ept_leaf(mfn, 0, ept_type(w.e), (unsigned)(w.e & EPT_RWX) | MV_P2M_R,
                           MV_P2M_MT_WB, special) & ~EPT_RWX) | (w.e & EPT_RWX);
    mv_ept_t old;
    mv__p2m_invalidate_start(p, gfn, 1);
    mv__p2m_write_leaf(p, gfn, 0, e, &old);
    mv__p2m_invalidate_end(p, gfn, 1);
    mv_spin_unlock(&p->lock);
    return 0;
}

/* ---- Type changes over a range ----------------------------------------------------- */

static bool ram_type_change_ok(unsigned from, unsigned to)
{
    bool f = from == MV_P2M_RAM_RW || from == MV_P2M_RAM_RO || from == MV_P2M_RAM_LOGDIRTY;
    bool t = to == MV_P2M_RAM_RW || to == MV_P2M_RAM_RO || to == MV_P2M_RAM_LOGDIRTY;
    return f && t;
}

/* The type a retype to `want` writes (lock held): while logging, nothing becomes writable
 * without a fault (I14). Read under the lock, since logging may start at any moment. */
static unsigned retype_target(const struct mv_p2m *p, unsigned want)
{
    return want == MV_P2M_RAM_RW && p->logdirty ? MV_P2M_RAM_LOGDIRTY : want;
}

/* Retype [first, first + count) from -> want, splintering partly covered superpages;
 * one notification per call; budgeted (MV_EAGAIN, *done gfns examined). */
static int retype_range(mv_domain_t *d, mv_gfn_t first, uint64_t count, unsigned from,
                        unsigned want, uint64_t *done)
{
    struct mv_p2m *p = p2m_of(d);
    mv_host_t *h = d->h;
    uint64_t budget = TYPE_RANGE_BUDGET, pos = 0;
    *done = 0;
    int rc = mv__p2m_lock_cache(p, 1);
    if (rc)
        return rc;
    unsigned to = retype_target(p, want);
    if (from == to) {
        /* Logging makes ram_rw ram_logdirty, which is what the range holds already. */
        mv_spin_unlock(&p->lock);
        *done = count;
        return 0;
    }
    mv__p2m_invalidate_start(p, first, count);
    bool reduced = false;
    while (pos < count) {
        if (from == to) {
            pos = count; /* logging started while the lock was dropped: as above */
            break;
        }
        if (!budget) {
            rc = MV_EAGAIN;
            break;
        }
        mv_gfn_t g = first + pos;
        struct p2m_walk w;
        mv__p2m_walk(h, p, g, &w);
        uint64_t span = 1ull << (9 * w.level);
        mv_gfn_t base = g & ~(span - 1);
        uint64_t step = base + span - g;
        if (step > count - pos)
            step = count - pos;
        if (w.e && ept_type(w.e) == from && w.level <= 2) {
            if (base < g || base + span > first + count) {
                /* Partly covered superpage: splinter it, then look again. Another
                 * mutator may have emptied the cache: refill it with the lock dropped,
                 * what was retyped so far flushed and its notification ended. */
                if (!mv__p2m_cache_has(p, 1)) {
                    if (reduced)
                        mv__p2m_flush_gphys(p);
                    reduced = false;
                    mv__p2m_invalidate_end(p, first, count);
                    mv_spin_unlock(&p->lock);
                    if ((rc = mv__p2m_lock_cache(p, 1))) {
                        *done = pos;
                        return rc;
                    }
                    to = retype_target(p, want);
                    mv__p2m_invalidate_start(p, first, count);
                    continue;
                }
                mv__p2m_splinter_at(p, g, w.level);
                continue;
            }
            /* The type sets the rights; an entry's own narrowing of R and X stays. */
            unsigned keep = (unsigned)(w.e & EPT_RWX) | MV_P2M_W;
            mv_ept_t ne = ept_leaf(ept_mfn(w.e), w.level, to, keep, MV_P2M_MT_WB,
                                   (w.e & EPT_SPECIAL) != 0);
            mv__p2m_account(p, w.e, w.level, -1);
            ept_write(w.slot, ne);
            mv__p2m_account(p, ne, w.level, +1);
            reduced |= (p2m_type_rights(from) & ~p2m_type_rights(to)) != 0;
            budget -= budget < span ? budget : span;
        }
        /* Work is entries visited and pages retyped, not address space skipped. */
        if (budget)
            budget--;
        pos += step;
    }
    if (reduced)
        mv__p2m_flush_gphys(p);
    mv__p2m_invalidate_end(p, first, count);
    mv_spin_unlock(&p->lock);
    mv__epoch_reclaim(h, false);
    *done = pos;
    return rc;
}

MV_API int mv_p2m_change_type_range(mv_domain_t *d, mv_gfn_t first, uint64_t count,
                                    unsigned from, unsigned to, uint64_t *done)
{
    if (!d || !p2m_of(d) || !done)
        return MV_EINVAL;
    *done = 0;
    if (!ram_type_change_ok(from, to))
        return MV_EINVAL;
    struct mv_p2m *p = p2m_of(d);
    if (first >= p->max_gfn || p->max_gfn - first < count)
        return MV_ERANGE;
    if (mv__domain_dying(d))
        return MV_ESRCH;
    if (!count || from == to)
        return 0;
    return retype_range(d, first, count, from, to, done);
}

/* ---- Listeners and statistics ------------------------------------------------------- */

MV_API int mv_p2m_register_listener(mv_domain_t *d, const struct mv_p2m_listener *l)
{
    if (!d || !p2m_of(d) || !l || (!l->invalidate_start && !l->invalidate_end))
        return MV_EINVAL;
    struct mv_p2m *p = p2m_of(d);
    int rc = 0;
    mv_spin_lock(&p->lock);
    if (p->nr_listeners == MV_P2M_MAX_LISTENERS)
        rc = MV_ENOSPC;
    else
        p->listeners[p->nr_listeners++] = *l;
    mv_spin_unlock(&p->lock);
    return rc;
}

MV_API int mv_p2m_unregister_listener(mv_domain_t *d, const struct mv_p2m_listener *l)
{
    if (!d || !p2m_of(d) || !l)
        return MV_EINVAL;
    struct mv_p2m *p = p2m_of(d);
    int rc = MV_ENOENT;
    mv_spin_lock(&p->lock);
    for (uint32_t i = 0; i < p->nr_listeners; i++) {
        if (!memcmp(&p->listeners[i], l, sizeof(*l))) {
            p->listeners[i] = p->listeners[--p->nr_listeners];
            rc = 0;
            break;
        }
    }
    mv_spin_unlock(&p->lock);
    return rc;
}

MV_API uint64_t mv_p2m_seq(const mv_domain_t *d)
{
    struct mv_p2m *p = d ? p2m_of(d) : NULL;
    return p ? atomic_load_explicit(&p->seq, memory_order_acquire) : 0;
}

MV_API uint32_t mv_p2m_in_progress(const mv_domain_t *d)
{
    struct mv_p2m *p = d ? p2m_of(d) : NULL;
    return p ? atomic_load_explicit(&p->in_progress, memory_order_acquire) : 0;
}

MV_API int mv_p2m_stats(const mv_domain_t *d, struct mv_p2m_stats *st)
{
    if (!d || !p2m_of(d))
        return MV_EINVAL;
    int rc = mv__prepare_out(st, sizeof(*st));
    if (rc)
        return rc;
    struct mv_p2m *p = p2m_of(d);
    mv_spin_lock(&p->lock);
    for (unsigned i = 0; i < 3; i++)
        st->pages_by_order[i] = p->leaves[i];
    for (unsigned t = 0; t < MV_P2M_NR_TYPES; t++)
        st->pages_by_type[t] = p->pages_by_type[t];
    st->table_frames = atomic_load_explicit(&p->table_frames, memory_order_relaxed);
    st->splinters = p->splinters;
    st->populated = p->populated;
    st->decreased = p->decreased;
    st->logdirty = p->logdirty;
    st->logdirty_rounds = p->ld_rounds;
    st->logdirty_last_round_dirty = p->ld_last_dirty;
    st->logdirty_retyped = p->ld_retyped;
    st->logdirty_splits = p->ld_splits;
    st->logdirty_collapsed = p->ld_collapsed;
    st->write_faults = p->write_faults;
    uint64_t ram = 0;
    for (unsigned t = 0; t < MV_P2M_NR_TYPES; t++)
        if (p2m_is_ram(t))
            ram += p->pages_by_type[t];
    mv_spin_unlock(&p->lock);
    st->bytes_per_gib = ram ? st->table_frames * MV_PAGE_SIZE * 262144ull / ram : 0;
    return 0;
}
