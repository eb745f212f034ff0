/*
 * shadow/shadow-internal.h - the shadow module's structures, for shadow/ and the tests.
 *
 * A shadow page is one machine frame holding 512 x86-64 entries (machine addresses) plus
 * one metadata node per entry. It is named by (guest frame, type) in a hash: the shadow
 * of a guest L1..L4 table, or a splinter of a guest 2 MiB (FL1) or 1 GiB (FL2) page keyed
 * by its first gfn. Nodes chain the shadow's entries into two kinds of reverse maps:
 *  - a leaf entry (L1, FL1) sits in the rmap bucket of the gfn it maps;
 *  - an upper entry sits in the parent list of the shadow it points to,
 * so a p2m change finds every leaf of a gfn, and dropping a shadow finds every entry that
 * points at it. A node reference is (page index << 9 | entry index).
 *
 * Locks: everything here is under the domain's shadow lock (MV_LOCK_RANK_SHADOW), taken
 * after the p2m lock when the listener runs. Nothing is allocated under it: pool slots
 * (a frame and its nodes) are materialized before the lock into a per-vCPU topup cache.
 */
#ifndef MV_SHADOW_INTERNAL_H
#define MV_SHADOW_INTERNAL_H

#include <memvirt/shadow.h>

#include "p2m-internal.h"

/* ---- x86-64 entry format (Intel SDM vol. 3, 4.5), declared once ---------------------- */
#define X86E_P (1ull << 0)
#define X86E_RW (1ull << 1)
#define X86E_US (1ull << 2)
#define X86E_PWT (1ull << 3)
#define X86E_PCD (1ull << 4)
#define X86E_A (1ull << 5)
#define X86E_D (1ull << 6)
#define X86E_PS (1ull << 7)
#define X86E_G (1ull << 8)
#define X86E_NX (1ull << 63)
#define X86E_ADDR 0x000ffffffffff000ull

/* Shadow types (also the level + 1 of the table's entries for L1..L4). */
enum sh_type { SH_NONE = 0, SH_L1 = 1, SH_L2 = 2, SH_L3 = 3, SH_L4 = 4, SH_FL1 = 5, SH_FL2 = 6,
               SH_NR_TYPES = 7 };

static inline bool sh_type_leafy(unsigned t) { return t == SH_L1 || t == SH_FL1; }
/* A shadow of a guest page-table frame (its gfn must stay read-only). */
static inline bool sh_type_is_table(unsigned t) { return t >= SH_L1 && t <= SH_L4; }

#define SH_NIL 0xffffffffu
#define SH_ENTRIES 512u
#define SH_TOPUP 6u          /* slots one fault may need: L3, L2, L1 or FL2 + FL1, spare */
#define SH_ROOTS 4u          /* roots a vCPU keeps */
#define SH_FLOOR_PER_VCPU MV_SHADOW_FLOOR_PER_VCPU
#define SH_RMAP_BUCKETS 4096u
#define SH_WALK_CACHE 64u    /* table frames a vCPU's walk cache holds */

/* The pool a guest of `frames` frames gets by default: a 64th of it plus 256. */
static inline uint64_t sh_pool_for(uint64_t frames)
{
    return frames / 64 + 256;
}

struct sh_node {
    uint64_t key;  /* leaf: the gfn mapped; upper: the page index pointed at */
    uint32_t next; /* chain (rmap bucket or parent list) */
    uint32_t prev;
};

struct sh_page {
    mv_mfn_t smfn;           /* the shadow frame, or MV_INVALID_MFN (slot not materialized) */
    struct sh_node *nodes;   /* [512] */
    mv_gfn_t gfn;            /* the guest frame (FL1/FL2: first gfn of the superpage) */
    mv_mfn_t gmfn;           /* the machine frame the p2m gave for gfn when shadowed */
    uint8_t type;            /* enum sh_type; SH_NONE: free */
    uint8_t state;           /* SLOT_* */
    uint16_t pins;           /* vCPU roots holding it */
    uint16_t oos;            /* L1 out of sync: 1 + the vCPU whose list holds it; 0: in sync */
    uint16_t writes;         /* emulated writes to the frame since shadowed or resynced */
    uint16_t idle_writes;    /* ... since a walk last used this shadow */
    uint32_t mark;           /* reachability searches (oos.c): visited when == mark_gen */
    bool dead_root;          /* L4 whose user half the guest emptied: dropped when left */
    uint32_t touched;        /* the locked section that last moved it to the LRU head */
    uint32_t hnext;          /* hash chain */
    uint32_t up;             /* first node of the parent list */
    uint32_t lru_prev, lru_next;
    uint32_t fnext;          /* free list */
};

enum { SLOT_EMPTY = 0, SLOT_FREE = 1, SLOT_TOPUP = 2, SLOT_USED = 3 };

/* The self-sizing pool (pool.c): its clock, in shadows created and faults taken. */
#define SH_GROW_WINDOW 128u    /* creates between growth decisions */
#define SH_SHRINK_WINDOW 8192u /* faults between shrink decisions */
#define SH_EVICTED_FILTER 1024u /* recently evicted (gfn, type), to count rebuilds */

struct sh_domain {
    mv_domain_t *d;
    mv_spinlock_t lock;           /* MV_LOCK_RANK_SHADOW */
    uint32_t cap;                 /* slots: the ceiling */
    uint32_t budget;              /* frames the pool may hold now: floor .. ceiling */
    uint32_t floor, ceiling;
    bool follows_size;            /* no ceiling configured: growth follows the guest's size */
    uint32_t materializing;       /* empty slots taken by topups, frames not yet in */
    struct sh_page *pages;        /* [cap] */
    uint32_t nbuckets;
    uint32_t *hash;               /* [nbuckets] page indices */
    uint32_t rmap[SH_RMAP_BUCKETS];
    uint32_t free_head;           /* materialized, unused */
    uint32_t empty_head;          /* not materialized */
    uint32_t lru_head, lru_tail;  /* most recent at head */
    uint64_t pool_frames;
    uint64_t in_use;              /* shadows live */
    bool any_used;
    /* Sizing: creates and rebuilds (creates of something evicted lately) in this window;
     * the most shadows live during the shrink window. */
    uint32_t evicted[SH_EVICTED_FILTER];
    uint32_t win_creates, win_rebuilds, win_faults;
    uint64_t win_max_used;
    bool trim_pending;
    struct mv_p2m_listener listener;
    uint32_t oos_budget;          /* out-of-sync L1s per vCPU (0: none) */
    uint32_t noos;                /* out of sync now, all vCPUs */
    bool resyncing;               /* out-of-sync frames count as protected meanwhile */
    uint32_t *set, *set_fixed;    /* [nr_vcpus * oos_budget]: a resync's pages; entries fixed,
                                   * bit 31 set when the guest table was empty */
    /* Table shadows per gfn bucket: a gfn whose bucket is 0 is no page table (the fast
     * answer for the leaves of data pages). */
    uint32_t tables_in[SH_RMAP_BUCKETS];
    uint32_t mark_gen;
    uint32_t section;             /* counts the fault path's locked sections */
    /* statistics */
    uint64_t by_type[SH_NR_TYPES];
    uint64_t faults[MV_SHADOW_NR_KINDS];
    uint64_t emulated, evictions, zapped;
    uint64_t unsyncs, resyncs, resync_fixed, unshadowed_early, unshadowed_freed;
    uint64_t rebuilds, grows, shrinks;
};

struct sh_vcpu {
    mv_vcpu_t *v;
    uint32_t top[SH_TOPUP];
    uint32_t ntop;
    uint32_t roots[SH_ROOTS];     /* page indices, pinned; SH_NIL */
    uint32_t cur;                 /* current root, SH_NIL */
    uint64_t cr3;
    /* Out-of-sync L1s this vCPU unsynced, oldest first, each with the guest frame's
     * contents when it was unsynced. */
    uint32_t noos;
    uint32_t oos[MV_SHADOW_OOS_MAX];
    uint8_t slot[MV_SHADOW_OOS_MAX]; /* oos[k]'s snapshot: snap + slot[k] * 512 */
    uint64_t *snap;               /* [oos budget][512] */
    /* The table frames the walker found lately, by gfn (direct-mapped), each valid for
     * the p2m sequence number it was read under: a guest reads the same few tables again
     * and again, and a p2m change moves the number. */
    struct sh_wc {
        uint64_t seq;
        mv_gfn_t gfn;
        mv_mfn_t mfn;     /* the entry as mv_p2m_lookup gave it (type INVALID: none) */
        uint8_t type, access;
    } wc[SH_WALK_CACHE];
};

static inline struct sh_domain *sh_of(const mv_domain_t *d)
{
    return (struct sh_domain *)d->mod[MV_MOD_SHADOW];
}
static inline struct sh_vcpu *shv_of(const mv_vcpu_t *v)
{
    return (struct sh_vcpu *)v->mod[MV_MOD_SHADOW];
}
static inline uint64_t *sh_table(const struct sh_domain *s, const struct sh_page *sp)
{
    return (uint64_t *)mv__mfn_va(s->d->h, sp->smfn);
}
static inline uint64_t sh_read(const uint64_t *slot)
{
    return atomic_load_explicit((const _Atomic uint64_t *)slot, memory_order_acquire);
}
static inline void sh_store(uint64_t *slot, uint64_t v)
{
    atomic_store_explicit((_Atomic uint64_t *)slot, v, memory_order_release);
}

/* ---- walk.c: the guest walker ---------------------------------------------------------- */

struct sh_walk {
    uint64_t va;
    uint64_t seq;          /* the p2m's sequence number before the walk read it */
    uint64_t e[4];         /* entries read, [3] = L4; after A/D update */
    uint64_t dropped[4];   /* A/D bits set in e[] whose write a read-only table dropped */
    mv_gfn_t tgfn[4];      /* gfn of the table read at each level */
    mv_mfn_t tmfn[4];      /* ... and the frame the p2m gave for it */
    struct mv_p2m_entry leaf_pe; /* the leaf gfn's p2m entry, under the same number */
    int leaf;              /* level of the leaf entry (0, 1 or 2) */
    mv_gfn_t gfn;          /* the 4 KiB gfn reached */
    bool w, u, nx;         /* combined rights */
    uint32_t pfec;         /* on failure: the error code */
};

/* Bits of a guest entry at level lv that are reserved (by width, NXE, level, PS). */
bool mv__sh_reserved(uint64_t e, unsigned lv, unsigned pbits, bool nxe, bool gb);
/*
 * gfn's p2m type, access and frame through the vCPU's walk cache (the table frames it
 * walked lately), valid for p2m sequence number seq: read it before calling, and check
 * it has not moved (and no change is in flight) before trusting the result.
 */
struct sh_wc *mv__sh_wc_fill(mv_vcpu_t *v, struct sh_wc *c, mv_gfn_t gfn, uint64_t seq);
static inline void mv__sh_wc_lookup(mv_vcpu_t *v, mv_gfn_t gfn, uint64_t seq,
                                    struct mv_p2m_entry *pe)
{
    struct sh_wc *c = &shv_of(v)->wc[(gfn ^ (gfn >> 6)) & (SH_WALK_CACHE - 1)];
    if (MV_UNLIKELY(c->seq != seq || c->gfn != gfn))
        c = mv__sh_wc_fill(v, c, gfn, seq);
    pe->mfn = c->mfn;
    pe->type = c->type;
    pe->access = c->access;
}
/* Read a guest entry at gfn's entry idx (no hold: the caller validates with the p2m seq). */
int mv__sh_guest_entry(mv_domain_t *d, mv_gfn_t gfn, unsigned idx, uint64_t *e);
/*
 * Walk for an access (error-code bits W/U/ID, MV_SHADOW_ACC_*), setting A/D bits as
 * hardware does when the access is allowed. 0 ok; 1 the guest faults (w->pfec);
 * MV_EAGAIN the tables changed under us (retry). No lock held.
 */
int mv__sh_walk(mv_vcpu_t *v, uint64_t cr3, uint64_t va, uint32_t ec, uint32_t access,
                struct sh_walk *w);

/* ---- pool.c: slots, hash, rmap, entries --------------------------------------------- */

int mv__sh_topup(mv_vcpu_t *v);
/* A fault was taken (lock held): the shrink clock. */
void mv__sh_pool_tick(struct sh_domain *s);
/* Give free pool frames back to the heap down to what the last window needed (no lock). */
void mv__sh_pool_trim(struct sh_domain *s, bool now);
uint32_t mv__sh_lookup(struct sh_domain *s, mv_gfn_t gfn, unsigned type);
/* A new shadow from the vCPU's topup (lock held); write-protects gfn for table types. */
uint32_t mv__sh_create(struct sh_domain *s, struct sh_vcpu *sv, mv_gfn_t gfn, unsigned type,
                       mv_mfn_t gmfn);
/* Every table shadow of gfn: tab[type] (SH_L1..SH_L4), SH_NIL where none; false: none. */
bool mv__sh_tables_of(struct sh_domain *s, mv_gfn_t gfn, uint32_t tab[SH_NR_TYPES]);
/* Set entry idx of page pi (lock held): key is the gfn (leafy pages) or the child page. */
void mv__sh_set(struct sh_domain *s, uint32_t pi, unsigned idx, uint64_t val, uint64_t key);
void mv__sh_unshadow(struct sh_domain *s, uint32_t pi);
void mv__sh_touch(struct sh_domain *s, uint32_t pi);
/* Remove every leaf that maps a gfn in [first, first + n); the count removed. */
uint64_t mv__sh_zap_gfns(struct sh_domain *s, mv_gfn_t first, uint64_t n);
/* Clear RW in every leaf that maps gfn. */
bool mv__sh_write_protect(struct sh_domain *s, mv_gfn_t gfn);
void mv__sh_flush_all(struct sh_domain *s);
void mv__sh_free_all(struct sh_domain *s);

/* ---- oos.c: out-of-sync L1 shadows and the write heuristics --------------------------- */

/* Writes to a frame not used as a page table meanwhile before its shadows go. */
#define SH_UNSHADOW_WRITES 16u
/* Entries one emulated write covers at least for the frame to count as reused as data. */
#define SH_BULK_WRITE_ENTRIES 64u
/* Emulated writes to an L1 before it is left writable (out of sync). */
#define SH_UNSYNC_WRITES 1u

/*
 * An emulated write of SH_BULK_WRITE_ENTRIES or more to gfn's frame, before it is applied
 * to the shadows (lock held): the guest copies or fills the page as data - a freed page
 * table reused, or one zeroed to serve anew - so its shadows go (a root a vCPU runs on
 * stays) instead of revalidating every entry; a walk that uses it as a table again
 * shadows it again. True when a table shadow of gfn remains in tab (refreshed).
 */
bool mv__sh_bulk_write(struct sh_domain *s, mv_gfn_t gfn, uint32_t tab[SH_NR_TYPES]);
/* Must writes to gfn trap? (a guest page table not tracked out of sync) */
bool mv__sh_gfn_protected(struct sh_domain *s, mv_gfn_t gfn);
/*
 * After an emulated write to gfn's frame `guest`, whose table shadows are tab (lock held):
 * unsync its L1 when written repeatedly, drop its shadows when it is written without
 * being used as a table or when the guest emptied it. sv is the writing vCPU's.
 */
void mv__sh_after_write(struct sh_domain *s, struct sh_vcpu *sv, mv_gfn_t gfn,
                        const uint32_t tab[SH_NR_TYPES], const uint64_t *guest, bool cleared);
/*
 * Bring back in sync the out-of-sync L1s a walk from shadow `top` reaches (`top` included):
 * at a CR3 load (top: the new root), a full flush (the current root) and when a walk
 * links `top` under an entry that did not point to it.
 */
void mv__sh_resync_below(struct sh_domain *s, uint32_t top, bool nxe, bool gb, bool may_drop);
/*
 * The same for one page: before its frame serves as another type, when a vCPU's list is
 * full, and before a walk links it under an upper entry that did not point to it (the
 * staleness the guest allowed for the walks that went through it must not reach walks
 * that never did). With may_drop, an L1 the guest emptied goes; else it stays (the
 * caller holds its index).
 */
void mv__sh_resync_one(struct sh_domain *s, uint32_t pi, bool nxe, bool gb, bool may_drop);
/* The snapshot of out-of-sync pi (lock held). */
uint64_t *mv__sh_snapshot(struct sh_domain *s, uint32_t pi);
/* A shadow that goes (unshadow): forget its out-of-sync state. */
void mv__sh_oos_forget(struct sh_domain *s, uint32_t pi);
/* Is the guest table all not-present? */
bool mv__sh_guest_empty(const uint64_t *guest);

/* ---- shadow.c ----------------------------------------------------------------------- */
/* The shadow entry for guest entry e at level lv of a table shadow (lock held). */
uint64_t mv__sh_propagate(struct sh_domain *s, unsigned lv, uint64_t e, bool nxe, bool gb,
                          uint64_t *key);
/* A leaf for gfn with the guest rights given (lock held, p2m seq checked by caller). */
uint64_t mv__sh_leaf(struct sh_domain *s, mv_gfn_t gfn, uint64_t grights, bool nxe);
/* The same from a p2m entry read under the same sequence number. */
uint64_t mv__sh_leaf_pe(struct sh_domain *s, mv_gfn_t gfn, const struct mv_p2m_entry *pe,
                        uint64_t grights, bool nxe);
/* Revalidate entries [first, last] of gfn's table shadows tab (mv__sh_tables_of) from the
 * guest table (lock held). */
bool mv__sh_revalidate(struct sh_domain *s, const uint32_t tab[SH_NR_TYPES],
                       const uint64_t *guest, unsigned first, unsigned last, bool nxe, bool gb);
static inline bool mv__sh_nxe(const mv_vcpu_t *v) { return (v->state.efer & MV_EFER_NXE) != 0; }
static inline bool mv__sh_gb(const mv_vcpu_t *v)
{
    return (v->state.flags & MV_VCPUF_GBPAGES) != 0;
}

void mv__sh_audit(mv_host_t *h, struct mv_audit_ctx *ac);
extern const struct mv_module_ops mv__shadow_module;

#endif
