/*
 * p2m/logdirty.c - log-dirty: write faults, EPT violations, enable/disable and
 * peek-and-clean, for live migration's pre-copy rounds.
 *
 * One mechanism (ARCHITECTURE.md): while logging, RAM is ram_logdirty (readable, not
 * writable); the first write faults, the page is marked in the bitmap and its entry becomes
 * ram_rw (a superpage is splintered down to the 4 KiB page written); peek-and-clean hands
 * the bits out, clears them and makes those pages ram_logdirty again. Pages the engine
 * writes itself are marked through mv__p2m_mark_dirty. Invariant I14: while logging, every
 * entry that lets the guest write has its dirty bit set, so no write is lost between two
 * peeks.
 *
 * Enable and disable serialize on the p2m lock and check the state under it, so two
 * callers racing (XSA-397) end in one state; the bitmap is allocated before the lock and
 * freed after it.
 */
#include <string.h>

#include "p2m-internal.h"

#define PEEK_BUDGET (1u << 22) /* gfns per peek-and-clean call */

/* ---- The bitmap --------------------------------------------------------------------------- */

static _Atomic uint64_t *chunk_words(const struct mv_p2m *p, uint64_t c)
{
    return (_Atomic uint64_t *)(void *)ept_va(p->d->h, p->ld_dir[c]);
}

static int alloc_chunk(struct mv_p2m *p, mv_mfn_t *m)
{
    mv_domain_t *d = p->d;
    int rc = mv__heap_alloc(d->h, 0, d->node_affinity, MV_ALLOC_ZERO, MV_OWNER_INTERNAL, m);
    if (!rc)
        atomic_fetch_add_explicit(&d->overhead_pages, 1, memory_order_relaxed);
    return rc;
}

static void free_chunk(struct mv_p2m *p, mv_mfn_t m)
{
    struct mv_frame *f = mv__frame(p->d->h, m);
    atomic_store_explicit(&f->owner, MV_OWNER_PENDING, memory_order_release);
    mv__heap_free(p->d->h, m, 0);
    atomic_fetch_sub_explicit(&p->d->overhead_pages, 1, memory_order_relaxed);
}

int mv__p2m_ld_prepare(struct mv_p2m *p, mv_gfn_t gfn, uint64_t n)
{
    for (;;) {
        mv_spin_lock(&p->lock);
        uint64_t missing = UINT64_MAX;
        if (p->logdirty)
            for (uint64_t c = gfn / LD_CHUNK_GFNS; c <= (gfn + n - 1) / LD_CHUNK_GFNS; c++)
                if (p->ld_dir[c] == MV_INVALID_MFN) {
                    missing = c;
                    break;
                }
        mv_spin_unlock(&p->lock);
        if (missing == UINT64_MAX)
            return 0;
        mv_mfn_t m;
        int rc = alloc_chunk(p, &m);
        if (rc)
            return rc;
        mv_spin_lock(&p->lock);
        bool used = p->logdirty && p->ld_dir[missing] == MV_INVALID_MFN;
        if (used)
            p->ld_dir[missing] = m;
        mv_spin_unlock(&p->lock);
        if (!used)
            free_chunk(p, m);
    }
}

void mv__p2m_mark_dirty(struct mv_p2m *p, mv_gfn_t gfn, uint64_t n)
{
    mv__assert_held(&p->lock);
    if (!p->logdirty)
        return;
    for (mv_gfn_t g = gfn; g < gfn + n; g++) {
        uint64_t c = g / LD_CHUNK_GFNS, bit = g % LD_CHUNK_GFNS;
        MV_ASSERT(p->ld_dir[c] != MV_INVALID_MFN);
        atomic_fetch_or_explicit(&chunk_words(p, c)[bit / 64], 1ull << (bit % 64),
                                 memory_order_relaxed);
    }
}

int mv__p2m_engine_wrote(mv_domain_t *d, mv_gfn_t gfn, uint64_t n)
{
    struct mv_p2m *p = p2m_of(d);
    if (!p)
        return MV_EINVAL;
    int rc = mv__p2m_lock_ready(p, gfn, n, 0);
    if (rc)
        return rc;
    mv__p2m_mark_dirty(p, gfn, n);
    mv_spin_unlock(&p->lock);
    return 0;
}

bool mv__p2m_is_dirty(const struct mv_p2m *p, mv_gfn_t gfn)
{
    uint64_t c = gfn / LD_CHUNK_GFNS, bit = gfn % LD_CHUNK_GFNS;
    if (!p->logdirty || p->ld_dir[c] == MV_INVALID_MFN)
        return false;
    return (atomic_load_explicit(&chunk_words(p, c)[bit / 64], memory_order_relaxed) >>
            (bit % 64)) & 1;
}

static void free_dir(struct mv_p2m *p, mv_mfn_t *dir, uint64_t chunks)
{
    if (!dir)
        return;
    for (uint64_t c = 0; c < chunks; c++)
        if (dir[c] != MV_INVALID_MFN)
            free_chunk(p, dir[c]);
    mv__meta_free(p->d->h, dir, chunks * sizeof(*dir));
}

void mv__p2m_ld_free(struct mv_p2m *p)
{
    free_dir(p, p->ld_dir, p->ld_chunks);
    p->ld_dir = NULL;
    p->logdirty = false;
}

/* ---- Whole-tree retyping (enable, disable) ------------------------------------------------ */

static uint64_t retype_tree(struct mv_p2m *p, mv_mfn_t table, unsigned lv, unsigned from,
                            unsigned to)
{
    mv_ept_t *t = ept_va(p->d->h, table);
    uint64_t n = 0;
    for (unsigned i = 0; i < EPT_ENTRIES; i++) {
        mv_ept_t e = ept_read(&t[i]);
        if (ept_is_table(e, lv)) {
            n += retype_tree(p, ept_mfn(e), lv - 1, from, to);
        } else if (e && lv <= 2 && ept_type(e) == from &&
                   (from != MV_P2M_RAM_RW || (e & EPT_W))) {
            /* Keep the entry's own narrowing: only W comes and goes with log-dirty (a
             * ram_rw entry without W cannot be written and needs no tracking). */
            unsigned keep = (unsigned)(e & EPT_RWX) | (to == MV_P2M_RAM_RW ? MV_P2M_W : 0);
            mv_ept_t ne = ept_leaf(ept_mfn(e), lv, to, keep, MV_P2M_MT_WB,
                                   (e & EPT_SPECIAL) != 0);
            mv__p2m_account(p, e, lv, -1);
            ept_write(&t[i], ne);
            mv__p2m_account(p, ne, lv, +1);
            n++;
        }
    }
    return n;
}

/* Which chunks hold RAM (a lock-free look; enable re-checks under the lock). */
static void chunks_with_ram(struct mv_p2m *p, mv_mfn_t table, unsigned lv, mv_gfn_t base,
                            mv_mfn_t *dir, bool *missing)
{
    mv_ept_t *t = ept_va(p->d->h, table);
    for (unsigned i = 0; i < EPT_ENTRIES; i++) {
        mv_ept_t e = ept_read(&t[i]);
        mv_gfn_t g = base + ((mv_gfn_t)i << (9 * lv));
        if (ept_is_table(e, lv)) {
            chunks_with_ram(p, ept_mfn(e), lv - 1, g, dir, missing);
        } else if (e && lv <= 2 && p2m_is_ram(ept_type(e))) {
            uint64_t span = 1ull << (9 * lv);
            for (uint64_t c = g / LD_CHUNK_GFNS; c <= (g + span - 1) / LD_CHUNK_GFNS; c++)
                if (dir[c] == MV_INVALID_MFN)
                    *missing = true, dir[c] = 0; /* 0: wanted */
        }
    }
}

MV_API int mv_p2m_logdirty_enable(mv_domain_t *d)
{
    if (!d || !p2m_of(d))
        return MV_EINVAL;
    if (mv__domain_dying(d))
        return MV_ESRCH;
    struct mv_p2m *p = p2m_of(d);
    uint64_t chunks = (p->max_gfn + LD_CHUNK_GFNS - 1) / LD_CHUNK_GFNS;
    mv_mfn_t *dir = mv__meta_alloc(d->h, chunks * sizeof(*dir));
    if (!dir)
        return MV_ENOMEM;
    for (uint64_t c = 0; c < chunks; c++)
        dir[c] = MV_INVALID_MFN;
    /* Bitmap chunks for every range that holds RAM now; a few rounds catch late populates. */
    for (int attempt = 0;; attempt++) {
        bool missing = false;
        /* Lock-free, as a lookup: inside an epoch section, or a table retired meanwhile
         * could be freed and reused (as a guest page, say) under the walk. */
        uint32_t slot = mv__epoch_enter(d->h);
        chunks_with_ram(p, p->root, P2M_LEVELS - 1, 0, dir, &missing);
        mv__epoch_exit(d->h, slot);
        for (uint64_t c = 0; c < chunks; c++) {
            if (dir[c] != 0)
                continue;
            int rc = alloc_chunk(p, &dir[c]);
            if (rc) {
                dir[c] = MV_INVALID_MFN;
                free_dir(p, dir, chunks);
                return rc;
            }
        }
        mv_spin_lock(&p->lock);
        if (p->logdirty) {
            mv_spin_unlock(&p->lock);
            free_dir(p, dir, chunks);
            return MV_EALREADY; /* the other caller won */
        }
        missing = false;
        chunks_with_ram(p, p->root, P2M_LEVELS - 1, 0, dir, &missing);
        if (missing) {
            mv_spin_unlock(&p->lock);
            if (attempt == 3) {
                for (uint64_t c = 0; c < chunks; c++)
                    if (dir[c] == 0)
                        dir[c] = MV_INVALID_MFN;
                free_dir(p, dir, chunks);
                return MV_EBUSY; /* populates keep racing in: bounded, not retried forever */
            }
            continue;
        }
        p->ld_dir = dir;
        p->ld_chunks = chunks;
        p->logdirty = true;
        mv__p2m_invalidate_start(p, 0, p->max_gfn);
        p->ld_retyped += retype_tree(p, p->root, P2M_LEVELS - 1, MV_P2M_RAM_RW,
                                     MV_P2M_RAM_LOGDIRTY);
        mv__p2m_flush_gphys(p);
        mv__p2m_invalidate_end(p, 0, p->max_gfn);
        p->ld_round_dirty = 0;
        mv_spin_unlock(&p->lock);
        return 0;
    }
}

/*
 * After logging: an L1 table whose 512 entries map 512 contiguous, aligned frames as plain
 * ram_rw again becomes one 2 MiB leaf (KVM recovers huge pages the same way). The table
 * leaves through the epoch scheme. Lock held, inside a range notification.
 */
static uint64_t collapse_tree(struct mv_p2m *p, mv_mfn_t table, unsigned lv)
{
    mv_ept_t *t = ept_va(p->d->h, table);
    uint64_t n = 0;
    for (unsigned i = 0; i < EPT_ENTRIES; i++) {
        mv_ept_t e = ept_read(&t[i]);
        if (!ept_is_table(e, lv))
            continue;
        if (lv > 1) {
            n += collapse_tree(p, ept_mfn(e), lv - 1);
            continue;
        }
        const mv_ept_t *l1 = ept_va(p->d->h, ept_mfn(e));
        mv_mfn_t base = ept_mfn(l1[0]);
        bool ok = !(base & (EPT_ENTRIES - 1));
        for (unsigned j = 0; ok && j < EPT_ENTRIES; j++)
            ok = ept_type(l1[j]) == MV_P2M_RAM_RW && !(l1[j] & EPT_SPECIAL) &&
                 (l1[j] & EPT_RWX) == EPT_RWX && ept_mfn(l1[j]) == base + j;
        if (!ok)
            continue;
        mv_ept_t leaf = ept_leaf(base, 1, MV_P2M_RAM_RW, MV_P2M_RWX, MV_P2M_MT_WB, false);
        for (unsigned j = 0; j < EPT_ENTRIES; j++)
            mv__p2m_account(p, l1[j], 0, -1);
        ept_write(&t[i], leaf);
        mv__p2m_account(p, leaf, 1, +1);
        atomic_fetch_sub_explicit(&p->table_frames, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&p->d->overhead_pages, 1, memory_order_relaxed);
        mv__epoch_retire(p->d->h, ept_mfn(e));
        n++;
    }
    return n;
}

MV_API int mv_p2m_logdirty_disable(mv_domain_t *d)
{
    if (!d || !p2m_of(d))
        return MV_EINVAL;
    struct mv_p2m *p = p2m_of(d);
    mv_spin_lock(&p->lock);
    if (!p->logdirty) {
        mv_spin_unlock(&p->lock);
        return MV_EALREADY;
    }
    mv__p2m_invalidate_start(p, 0, p->max_gfn);
    p->ld_retyped += retype_tree(p, p->root, P2M_LEVELS - 1, MV_P2M_RAM_LOGDIRTY,
                                 MV_P2M_RAM_RW);
    p->ld_collapsed += collapse_tree(p, p->root, P2M_LEVELS - 1);
    mv__p2m_invalidate_end(p, 0, p->max_gfn);
    mv_mfn_t *dir = p->ld_dir;
    uint64_t chunks = p->ld_chunks;
    p->ld_dir = NULL;
    p->logdirty = false;
    mv_spin_unlock(&p->lock);
    free_dir(p, dir, chunks);
    mv__epoch_reclaim(d->h, false);
    return 0;
}

/* ---- Faults ---------------------------------------------------------------------------- */

static int classify_write(unsigned type)
{
    switch (type) {
    case MV_P2M_RAM_RW:
    case MV_P2M_RAM_LOGDIRTY:
        return 0;
    case MV_P2M_RAM_RO:
        return MV_EACCES;
    case MV_P2M_RAM_SHARED:
        return MV_EOPNOTSUPP; /* unsharing belongs to the sharing module */
    case MV_P2M_INVALID:
        return MV_ENOENT;
    case MV_P2M_MMIO_DIRECT:
        return MV_EPERM;
    default:
        return MV_EOPNOTSUPP;
    }
}

MV_API int mv_p2m_write_fault(mv_domain_t *d, mv_gfn_t gfn)
{
    if (!d || !p2m_of(d))
        return MV_EINVAL;
    struct mv_p2m *p = p2m_of(d);
    if (gfn >= p->max_gfn)
        return MV_ERANGE;
    struct mv_p2m_entry e;
    mv_p2m_lookup(d, gfn, &e);
    int rc = classify_write(e.type);
    if (rc)
        return rc;
    if (e.type == MV_P2M_RAM_RW) /* writable: a stale translation; narrowed: refused */
        return (e.access & MV_P2M_W) ? 0 : MV_EACCES;
    /*
     * Under the lock: the bitmap chunk for gfn, and a table frame for each level the
     * superpage around gfn (if any) is splintered down; a 4 KiB entry needs none, which
     * is the common case. The walk tells how many; short, we refill and look again.
     */
    struct p2m_walk w;
    for (unsigned tables = 0;;) {
        if ((rc = mv__p2m_lock_ready(p, gfn, 1, tables)))
            return rc;
        mv__p2m_walk(d->h, p, gfn, &w);
        unsigned type = w.e ? ept_type(w.e) : MV_P2M_INVALID;
        if ((rc = classify_write(type)) || type == MV_P2M_RAM_RW) {
            mv_spin_unlock(&p->lock);
            if (rc)
                return rc;
            return (w.e & EPT_W) ? 0 : MV_EACCES;
        }
        if (MV_LIKELY(mv__p2m_cache_has(p, w.level)))
            break;
        mv_spin_unlock(&p->lock);
        tables = w.level;
    }
    /* Splinter down to the page written: only it becomes writable. */
    while (w.level > 0) {
        mv__p2m_splinter_at(p, gfn, w.level);
        p->ld_splits++;
        mv__p2m_walk(d->h, p, gfn, &w);
    }
    mv_ept_t ne = ept_leaf(ept_mfn(w.e), 0, MV_P2M_RAM_RW,
                           (unsigned)(w.e & EPT_RWX) | MV_P2M_W, MV_P2M_MT_WB,
                           (w.e & EPT_SPECIAL) != 0);
    mv__p2m_invalidate_start(p, gfn, 1);
    mv__p2m_mark_dirty(p, gfn, 1); /* before the entry lets the guest write (I14) */
    mv__p2m_account(p, w.e, 0, -1);
    ept_write(w.slot, ne);
    mv__p2m_account(p, ne, 0, +1);
    mv__p2m_invalidate_end(p, gfn, 1);
    p->write_faults++;
    mv_spin_unlock(&p->lock);
    return 0;
}

MV_API int mv_p2m_handle_violation(mv_domain_t *d, mv_gfn_t gfn, unsigned access,
                                   unsigned *outcome)
{
    if (!d || !p2m_of(d) || !outcome || !access || (access & ~MV_P2M_RWX))
        return MV_EINVAL;
    struct mv_p2m_entry e;
    int rc = mv_p2m_lookup(d, gfn, &e);
    if (rc)
        return rc;
    switch (e.type) {
    case MV_P2M_INVALID:
        *outcome = MV_P2M_NO_MEMORY;
        return 0;
    case MV_P2M_MMIO_DIRECT:
        *outcome = (access & MV_P2M_X) ? MV_P2M_DENIED : MV_P2M_EMULATE_MMIO;
        return 0;
    default:
        break;
    }
    if ((access & MV_P2M_W) && !(e.access & MV_P2M_W)) {
        rc = mv_p2m_write_fault(d, gfn);
        if (rc == MV_EACCES) {
            *outcome = MV_P2M_DENIED;
            return 0;
        }
        if (rc)
            return rc;
        *outcome = MV_P2M_RETRY;
        return 0;
    }
    /* Rights the entry grants: a stale translation, retry; otherwise denied. */
    *outcome = (access & ~e.access) ? MV_P2M_DENIED : MV_P2M_RETRY;
    return 0;
}

/* ---- Peek and clean ------------------------------------------------------------------- */

/* Re-protect one dirty gfn (lock held): its writable entry becomes ram_logdirty again. */
static bool reprotect(struct mv_p2m *p, mv_gfn_t g)
{
    struct p2m_walk w;
    mv__p2m_walk(p->d->h, p, g, &w);
    if (!w.e || w.level > 2 || ept_type(w.e) != MV_P2M_RAM_RW)
        return false;
    mv_ept_t ne = ept_leaf(ept_mfn(w.e), w.level, MV_P2M_RAM_LOGDIRTY,
                           (unsigned)(w.e & EPT_RWX), MV_P2M_MT_WB, (w.e & EPT_SPECIAL) != 0);
    mv__p2m_account(p, w.e, w.level, -1);
    ept_write(w.slot, ne);
    mv__p2m_account(p, ne, w.level, +1);
    p->ld_retyped++;
    return true;
}

MV_API int mv_p2m_logdirty_peek_and_clean(mv_domain_t *d, mv_gfn_t first, uint64_t count,
                                          uint64_t *bitmap, uint64_t bitmap_bits,
                                          uint64_t *done, uint64_t *dirty)
{
    if (!d || !p2m_of(d) || !done || !dirty || (count && !bitmap))
        return MV_EINVAL;
    *done = 0;
    *dirty = 0;
    struct mv_p2m *p = p2m_of(d);
    if (bitmap_bits < count)
        return MV_ENOSPC;
    if (first >= p->max_gfn || p->max_gfn - first < count)
        return MV_ERANGE;
    uint64_t n = count < PEEK_BUDGET ? count : PEEK_BUDGET;
    mv_spin_lock(&p->lock);
    if (!p->logdirty) {
        mv_spin_unlock(&p->lock);
        return MV_EPERM;
    }
    mv__p2m_invalidate_start(p, first, n);
    bool reduced = false;
    uint64_t found = 0;
    for (uint64_t i = 0; i < n;) {
        mv_gfn_t g = first + i;
        uint64_t c = g / LD_CHUNK_GFNS, bit = g % LD_CHUNK_GFNS;
        /* Take up to 64 bits of one chunk word, aligned to the output where it can be. */
        uint64_t take = 64 - (bit % 64);
        if (take > n - i)
            take = n - i;
        uint64_t mask = take == 64 ? ~0ull : ((1ull << take) - 1) << (bit % 64);
        uint64_t bits = 0;
        if (p->ld_dir[c] != MV_INVALID_MFN)
            bits = atomic_fetch_and_explicit(&chunk_words(p, c)[bit / 64], ~mask,
                                             memory_order_relaxed) & mask;
        bits >>= bit % 64;
        /* Into the caller's bitmap at bit i. */
        uint64_t *out = &bitmap[i / 64];
        unsigned sh = (unsigned)(i % 64);
        uint64_t keep = sh ? *out & ((1ull << sh) - 1) : 0;
        *out = keep | (bits << sh);
        if (sh && sh + take > 64)
            out[1] = bits >> (64 - sh);
        for (uint64_t b = bits; b; b &= b - 1) {
            reduced |= reprotect(p, g + (uint64_t)__builtin_ctzll(b));
            found++;
        }
        i += take;
    }
    if (reduced)
        mv__p2m_flush_gphys(p);
    mv__p2m_invalidate_end(p, first, n);
    p->ld_round_dirty += found;
    if (first + n == p->max_gfn || n == count) {
        p->ld_rounds++;
        p->ld_last_dirty = p->ld_round_dirty;
        p->ld_round_dirty = 0;
    }
    mv_spin_unlock(&p->lock);
    *done = n;
    *dirty = found;
    return n < count ? MV_EAGAIN : 0;
}
