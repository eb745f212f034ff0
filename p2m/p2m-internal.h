/*
 * p2m/p2m-internal.h - the EPT entry format and the per-domain p2m, for the p2m files and the tests.
 *
 * Entry format (Intel SDM vol. 3, EPT), declared here once:
 *   bit 0 R, 1 W, 2 X            rights; an entry with none is not present to hardware
 *   bits 3-5                     memory type (leaves): 6 write-back, 0 uncacheable
 *   bit 7                        leaf at L2 (2 MiB) and L3 (1 GiB)
 *   bit 11                       (ignored by hardware) memvirt: special page
 *   bits 12-51                   frame address (table, 4 KiB, 2 MiB or 1 GiB aligned)
 *   bits 52-56                   (ignored by hardware) memvirt: the p2m type
 * Bits 8-10 and 57-63 keep their hardware meanings (A/D, MBEC, SPP, shadow stacks,
 * suppress-#VE) and memvirt leaves them zero. An entry of 0 maps nothing.
 */
#ifndef MV_P2M_INTERNAL_H
#define MV_P2M_INTERNAL_H

#include <memvirt/p2m.h>

#include "mm-internal.h"

typedef uint64_t mv_ept_t;

#define EPT_R (1ull << 0)
#define EPT_W (1ull << 1)
#define EPT_X (1ull << 2)
#define EPT_RWX (EPT_R | EPT_W | EPT_X)
#define EPT_MT_SHIFT 3
#define EPT_MT_MASK (7ull << EPT_MT_SHIFT)
#define EPT_LEAF (1ull << 7)
#define EPT_SPECIAL (1ull << 11)
#define EPT_ADDR_MASK 0x000ffffffffff000ull
#define EPT_TYPE_SHIFT 52
#define EPT_TYPE_MASK (0x1full << EPT_TYPE_SHIFT)

_Static_assert(MV_P2M_NR_TYPES <= 32, "p2m types must fit bits 52-56");
_Static_assert((EPT_TYPE_MASK & (EPT_ADDR_MASK | EPT_RWX | EPT_MT_MASK | EPT_LEAF |
                                 EPT_SPECIAL)) == 0, "EPT fields overlap");

#define EPT_ENTRIES 512u
#define P2M_LEVELS 4u

static inline unsigned ept_type(mv_ept_t e)
{
    return (unsigned)((e & EPT_TYPE_MASK) >> EPT_TYPE_SHIFT);
}

static inline mv_mfn_t ept_mfn(mv_ept_t e)
{
    return (e & EPT_ADDR_MASK) >> MV_PAGE_SHIFT;
}

/*
 * A table entry is readable, not a leaf and carries no type; every leaf carries a type
 * (an L1 entry included), so the level need not be looked at.
 */
static inline bool ept_is_table(mv_ept_t e, unsigned level)
{
    (void)level;
    return (e & (EPT_R | EPT_LEAF | EPT_TYPE_MASK)) == EPT_R;
}

/* Rights each type allows (then narrowed by the caller's access mask). */
static inline uint64_t p2m_type_rights(unsigned type)
{
    switch (type) {
    case MV_P2M_RAM_RW:
        return EPT_RWX;
    case MV_P2M_RAM_RO:
    case MV_P2M_RAM_LOGDIRTY:
    case MV_P2M_RAM_SHARED:
        return EPT_R | EPT_X;
    case MV_P2M_MMIO_DIRECT:
        return EPT_R | EPT_W;
    default:
        return 0;
    }
}

static inline bool p2m_is_ram(unsigned type)
{
    return type == MV_P2M_RAM_RW || type == MV_P2M_RAM_RO || type == MV_P2M_RAM_LOGDIRTY ||
           type == MV_P2M_RAM_SHARED;
}

/* A leaf entry of `level` (0: 4 KiB, 1: 2 MiB, 2: 1 GiB). */
static inline mv_ept_t ept_leaf(mv_mfn_t mfn, unsigned level, unsigned type, unsigned access,
                                unsigned mtype, bool special)
{
    if (type == MV_P2M_INVALID)
        return 0;
    mv_ept_t e = (mfn << MV_PAGE_SHIFT) & EPT_ADDR_MASK;
    e |= p2m_type_rights(type) & access;
    e |= (uint64_t)(type == MV_P2M_MMIO_DIRECT ? mtype : MV_P2M_MT_WB) << EPT_MT_SHIFT;
    e |= (uint64_t)type << EPT_TYPE_SHIFT;
    if (level)
        e |= EPT_LEAF;
    if (special)
        e |= EPT_SPECIAL;
    return e;
}

static inline mv_ept_t ept_table(mv_mfn_t mfn)
{
    return (mfn << MV_PAGE_SHIFT) | EPT_RWX;
}

/*
 * Table frames one step of a mutator may take: a leaf written at `level` may need a new
 * or splintered table at each level between the root and it (at most L3, L2 and L1).
 */
#define P2M_STEP_TABLES (P2M_LEVELS - 1)
static inline unsigned p2m_write_tables(unsigned level)
{
    return P2M_LEVELS - 1 - level;
}
/* Loose frames the table cache keeps besides its chunk (ept.c says why twice a step). */
#define P2M_LOOSE (2 * P2M_STEP_TABLES)

struct mv_p2m {
    mv_domain_t *d;
    mv_spinlock_t lock;           /* MV_LOCK_RANK_P2M: every update */
    mv_mfn_t root;
    mv_gfn_t max_gfn;             /* one past the highest gfn the guest may name */

    /* Listener protocol. */
    _Atomic uint64_t seq;
    _Atomic uint32_t in_progress;
    struct mv_p2m_listener listeners[MV_P2M_MAX_LISTENERS];
    uint32_t nr_listeners;

    /*
     * The table cache (ept.c), under the lock: zeroed frames, owner MV_OWNER_TOPUP, that
     * the lock's holder makes tables of; refilled from the heap with the lock dropped
     * (mv__p2m_lock_cache). Loose frames, then the rest of a chunk of contiguous frames
     * that grows with the tree (up to 2 MiB), so that a big guest's tables sit together -
     * a random lookup then misses in the cache for the entry, not also in the TLB for the
     * table.
     */
    mv_mfn_t topup[P2M_LOOSE];
    uint32_t nr_topup;
    mv_mfn_t pool_next;
    uint64_t pool_left;
    uint64_t cache_refills;  /* batches moved in */
    uint64_t cache_surplus;  /* batches that found the cache refilled by another thread */

    /*
     * Log-dirty (logdirty.c), under the lock: a directory of bitmap chunks, each a 4 KiB
     * engine frame holding the dirty bits of LD_CHUNK_GFNS gfns, allocated before the lock
     * for the ranges that hold RAM. Bits are set and cleared with the lock held.
     */
    bool logdirty;
    mv_mfn_t *ld_dir;
    uint64_t ld_chunks;
    uint64_t ld_rounds, ld_round_dirty, ld_last_dirty, ld_retyped, ld_splits, ld_collapsed;
    uint64_t write_faults;

    /* Statistics (under lock). */
    uint64_t leaves[3];
    uint64_t pages_by_type[MV_P2M_NR_TYPES];
    _Atomic uint64_t table_frames; /* changed under the lock; a refill reads it without */
    uint64_t splinters;
    uint64_t populated;
    uint64_t decreased;

    /* Teardown cursor. */
    mv_gfn_t teardown_gfn;
    bool frames_released;
};

static inline struct mv_p2m *p2m_of(const mv_domain_t *d)
{
    return (struct mv_p2m *)d->mod[MV_MOD_P2M];
}

/*
 * mv_p2m_seq and mv_p2m_in_progress inline, for the engine's own hot paths (the domain
 * has a p2m). A reader that saw `seq` before reading entries trusts them if, later, no
 * change is in progress and the number has not moved.
 */
static inline uint64_t mv__p2m_seq(const mv_domain_t *d)
{
    return atomic_load_explicit(&p2m_of(d)->seq, memory_order_acquire);
}

static inline bool mv__p2m_changing(const mv_domain_t *d)
{
    return atomic_load_explicit(&p2m_of(d)->in_progress, memory_order_acquire) != 0;
}

static inline bool mv__p2m_unchanged(const mv_domain_t *d, uint64_t seq)
{
    return !mv__p2m_changing(d) && mv__p2m_seq(d) == seq;
}

static inline mv_ept_t *ept_va(const mv_host_t *h, mv_mfn_t table)
{
    return (mv_ept_t *)mv__mfn_va(h, table);
}

static inline mv_ept_t ept_read(const mv_ept_t *slot)
{
    return atomic_load_explicit((const _Atomic mv_ept_t *)slot, memory_order_acquire);
}

static inline void ept_write(mv_ept_t *slot, mv_ept_t v)
{
    atomic_store_explicit((_Atomic mv_ept_t *)slot, v, memory_order_release);
}

/* ---- ept.c: the radix ------------------------------------------------------------------ */

/*
 * Find the leaf that maps gfn: its slot, level and entry (slot NULL when a table on the way
 * is missing). Lock-free safe (atomic reads); writers hold the p2m lock.
 */
struct p2m_walk {
    mv_ept_t *slot;
    unsigned level;
    mv_ept_t e;
};
static inline void mv__p2m_walk(const mv_host_t *h, const struct mv_p2m *p, mv_gfn_t gfn,
                                struct p2m_walk *w)
{
    mv_ept_t *t = ept_va(h, p->root);
    for (unsigned lv = P2M_LEVELS - 1;; lv--) {
        mv_ept_t *slot = &t[(gfn >> (9 * lv)) & (EPT_ENTRIES - 1)];
        mv_ept_t e = ept_read(slot);
        if (!ept_is_table(e, lv)) {
            w->slot = slot;
            w->level = lv;
            w->e = e;
            return;
        }
        t = ept_va(h, ept_mfn(e));
    }
}

/* Does the table cache hold `need` frames? (lock held) */
static inline bool mv__p2m_cache_has(const struct mv_p2m *p, unsigned need)
{
    return p->nr_topup + p->pool_left >= need;
}

/* The cache was short: refill it, then as mv__p2m_lock_cache (below). No lock held. */
int mv__p2m_lock_cache_refill(struct mv_p2m *p, unsigned need);
/* Return the cache's frames to the heap (no lock held; takes the lock briefly). */
void mv__p2m_topup_drain(struct mv_p2m *p);

/*
 * Write the leaf for [gfn, gfn + 2^(9*level)) (p2m lock held), creating or splintering
 * tables from the table cache on the way. The old leaf entry comes back in *old, and the
 * level of the leaf it belonged to (a bigger superpage has been splintered first, so *old
 * then describes only this range). Cannot fail when the cache holds p2m_write_tables(level)
 * frames; takes none when the tables down to `level` exist.
 */
void mv__p2m_write_leaf(struct mv_p2m *p, mv_gfn_t gfn, unsigned level, mv_ept_t e, mv_ept_t *old);

/* Splinter the superpage leaf of `level` that maps gfn (lock held, one cache frame). */
void mv__p2m_splinter_at(struct mv_p2m *p, mv_gfn_t gfn, unsigned level);

/* Account a leaf's appearance (+1) or removal (-1) in the statistics. */
void mv__p2m_account(struct mv_p2m *p, mv_ept_t e, unsigned level, int sign);

/* Listener protocol around a change (p2m lock held). */
void mv__p2m_invalidate_start(struct mv_p2m *p, mv_gfn_t first, uint64_t count);
void mv__p2m_invalidate_end(struct mv_p2m *p, mv_gfn_t first, uint64_t count);
/* Under HAP, flush guest-physical translations after rights were reduced. */
void mv__p2m_flush_gphys(struct mv_p2m *p);

/* Unmap whatever RAM sits in [gfn, gfn + n) (lock held): m2p back-pointers cleared, the
 * frames stay the domain's. Entries are left for the caller to overwrite. True if anything
 * was mapped. */
bool mv__p2m_unlink_range(struct mv_p2m *p, mv_gfn_t gfn, uint64_t n);

/* The bitmap was not ready: as mv__p2m_lock_ready (below), with no lock held (p2m.c). */
int mv__p2m_lock_ready_prepare(struct mv_p2m *p, mv_gfn_t gfn, uint64_t n, unsigned tables);

/* Free every table of the tree (teardown; no lock held). */
void mv__p2m_free_tables(struct mv_p2m *p);

/* ---- logdirty.c ------------------------------------------------------------------------ */

#define LD_CHUNK_GFNS (MV_PAGE_SIZE * 8u)

/* Bitmap chunks for [gfn, gfn + n) exist if logging (no lock held; may allocate). */
int mv__p2m_ld_prepare(struct mv_p2m *p, mv_gfn_t gfn, uint64_t n);
/* While logging: do the chunks for [gfn, gfn + n) exist? (lock held) */
static inline bool mv__p2m_ld_ready(const struct mv_p2m *p, mv_gfn_t gfn, uint64_t n)
{
    if (!p->logdirty)
        return true;
    for (uint64_t c = gfn / LD_CHUNK_GFNS; c <= (gfn + n - 1) / LD_CHUNK_GFNS; c++)
        if (p->ld_dir[c] == MV_INVALID_MFN)
            return false;
    return true;
}
/* Mark [gfn, gfn + n) dirty if logging (lock held, chunks ready). */
void mv__p2m_mark_dirty(struct mv_p2m *p, mv_gfn_t gfn, uint64_t n);
/*
 * The engine (or a module: shadow A/D updates, emulated page-table writes, unshare copies)
 * wrote guest memory at [gfn, gfn + n): mark it while logging. No lock held on entry.
 */
int mv__p2m_engine_wrote(mv_domain_t *d, mv_gfn_t gfn, uint64_t n);
/* Is gfn's dirty bit set? (lock held or quiesced) */
bool mv__p2m_is_dirty(const struct mv_p2m *p, mv_gfn_t gfn);
/* Free the bitmap (teardown; no lock held). */
void mv__p2m_ld_free(struct mv_p2m *p);

/* ---- Taking the lock for a step (inline: the fast paths are the write fault's) ------- */

/*
 * Take the p2m lock with the table cache holding at least `need` (<= P2M_STEP_TABLES)
 * frames, refilling it from the heap with the lock dropped as often as it takes. 0 with
 * the lock held; MV_ENOMEM (no lock held) when the frames cannot be had. Called with no
 * engine lock held. A caller that finds under the lock that it needs more (a walk showed a
 * superpage to splinter) unlocks, calls again with the larger need and re-checks.
 */
static inline int mv__p2m_lock_cache(struct mv_p2m *p, unsigned need)
{
    mv_spin_lock(&p->lock);
    if (MV_LIKELY(mv__p2m_cache_has(p, need)))
        return 0;
    mv_spin_unlock(&p->lock);
    return mv__p2m_lock_cache_refill(p, need);
}

/*
 * Take the p2m lock with the table cache holding `tables` frames and, if n, the log-dirty
 * bitmap ready for [gfn, gfn + n). 0 with the lock held, or an error without it.
 */
static inline int mv__p2m_lock_ready(struct mv_p2m *p, mv_gfn_t gfn, uint64_t n,
                                     unsigned tables)
{
    int rc = mv__p2m_lock_cache(p, tables);
    if (MV_LIKELY(rc || !n || mv__p2m_ld_ready(p, gfn, n)))
        return rc;
    mv_spin_unlock(&p->lock);
    return mv__p2m_lock_ready_prepare(p, gfn, n, tables);
}

extern const struct mv_module_ops mv__p2m_module;

#endif
