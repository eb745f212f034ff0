/*
 * pv/pv-internal.h - the PV module's state and the helpers its files share.
 *
 * State lives in three places:
 *  - the frames: a table's type word carries VALIDATED, or PARTIAL with the progress of a
 *    validation or devalidation in mm's module bits (PV_NVAL: entries [0, nval) hold their
 *    references; PV_PEND: entry nval also holds one, on a table that is itself partial, the
 *    next frame down the chain the walk resumes from);
 *  - the domain (struct pv_domain): the PV lock, the budget, the linear-entry table, the
 *    frames whose last general reference waits to be dropped once the lock is released,
 *    statistics and the teardown cursor;
 *  - each vCPU (struct pv_vcpu): the base pointers and at most one open continuation, a
 *    root that is partly validated (PV_PEND_VALIDATE) or partly released (PV_PEND_RELEASE),
 *    holding a general and a typed reference on it.
 *
 * Lock: pv_domain.lock (MV_LOCK_RANK_PV) guards all of it. Under it nothing is allocated
 * and no platform hook is called except tlb_flush; a general reference that may be the last
 * (which frees the frame through the heap) is queued and dropped after the lock.
 */
#ifndef MV_PV_INTERNAL_H
#define MV_PV_INTERNAL_H

#include "mm-internal.h"

/* ---- Entry format ------------------------------------------------------------------------ */

#define PV_PTE_HIGH_AVAIL 0x7ff0000000000000ull /* bits 52-62 */
#define PV_PTE_AD (MV_PTE_A | MV_PTE_D)

static inline mv_mfn_t pv_pte_mfn(uint64_t e)
{
    return (e & MV_PTE_ADDR_MASK) >> MV_PAGE_SHIFT;
}

static inline bool pv_l4_reserved_slot(unsigned slot)
{
    return slot >= MV_PV_L4_RESERVED_FIRST && slot <= MV_PV_L4_RESERVED_LAST;
}

/* ---- Progress in the type word (mm's module bits) ---------------------------------------- */

#define PV_NVAL_SHIFT MV_PGT_MOD_SHIFT
#define PV_NVAL_MASK (0x3ffull << PV_NVAL_SHIFT)
#define PV_PEND (1ull << (MV_PGT_MOD_SHIFT + 10))
#define PV_STATE_MASK (MV_PGT_VALIDATED | MV_PGT_PARTIAL | MV_PGT_MOD_MASK)
_Static_assert(((PV_NVAL_MASK | PV_PEND) & ~MV_PGT_MOD_MASK) == 0,
               "PV progress bits must lie in mm's module bits");

static inline unsigned pv_nval(uint64_t x)
{
    return (unsigned)((x & PV_NVAL_MASK) >> PV_NVAL_SHIFT);
}

static inline uint64_t pv_partial_state(unsigned nval, bool pend)
{
    return MV_PGT_PARTIAL | ((uint64_t)nval << PV_NVAL_SHIFT) | (pend ? PV_PEND : 0);
}

static inline uint64_t pv_type_word(const struct mv_frame *f)
{
    return atomic_load_explicit(&f->type_info, memory_order_acquire);
}

/* Replace the state bits (validated, partial, progress), keeping type, count and pin. */
static inline void pv_set_state(struct mv_frame *f, uint64_t state)
{
    uint64_t x = atomic_load_explicit(&f->type_info, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&f->type_info, &x,
                                                  (x & ~PV_STATE_MASK) | state,
                                                  memory_order_acq_rel, memory_order_relaxed))
        ;
}

/* ---- Per-domain and per-vCPU state ------------------------------------------------------- */

enum { PV_PEND_NONE = 0, PV_PEND_VALIDATE = 1, PV_PEND_RELEASE = 2 };

struct pv_vcpu {
    mv_mfn_t kbase;     /* kernel base pointer, or MV_INVALID_MFN */
    mv_mfn_t ubase;     /* user base pointer, or MV_INVALID_MFN */
    unsigned pend;      /* PV_PEND_* */
    mv_mfn_t pend_mfn;  /* the continuation's root (holds a general and a typed reference) */
};

/* A table taking part in linear entries: count > 0 targets of that many, < 0 holds -count. */
struct pv_linear {
    mv_mfn_t mfn;
    int32_t count;
};

#define PV_DEFER_MAX 256u
#define PV_DEFER_RESERVE 16u /* room one step of work may need (an entry, a chain of pops) */

struct pv_domain {
    mv_spinlock_t lock;
    uint32_t budget;
    uint32_t nr_linear;
    struct pv_linear linear[MV_PV_LINEAR_TABLES];
    uint32_t nr_deferred;
    struct mv_frame *deferred[PV_DEFER_MAX];

    /* teardown */
    unsigned td_phase;
    uint32_t td_vcpu;
    mv_mfn_t td_cursor;

    /* statistics (under lock) */
    uint64_t tables[4];
    uint64_t partial;
    uint64_t pinned;
    uint64_t validations;
    uint64_t devalidations;
    uint64_t updates;
    uint64_t fast_updates;
    uint64_t plain_writes;
    uint64_t preemptions;
    uint64_t flushes;
    uint64_t refusals[MV_PV_REFUSE_NR];

    struct pv_vcpu vcpu[];
};

static inline struct pv_domain *pv_dom(const mv_domain_t *d)
{
    return (struct pv_domain *)d->mod[MV_MOD_PV];
}

/* One call's working context. */
struct pv_ctx {
    mv_host_t *h;
    mv_domain_t *d;
    struct pv_domain *pd;
    mv_vcpu_t *v;
    struct pv_vcpu *pv;
    uint64_t budget;      /* entries left to examine in this call */
    uint64_t resv_mask;   /* address bits beyond the guest's width */
    int reason;           /* the refusal reason of the last error (MV_PV_REFUSE_*) */
};

/* Internal result: the budget (or the deferred-put room) ran out; progress is kept. */
#define PV_YIELD 1
/* Internal result: the request is done but a release continues later (vCPU continuation). */
#define PV_DONE_DEFERRED 2

/* ---- validate.c ------------------------------------------------------------------------ */

void mv__pv_ctx_init(struct pv_ctx *c, mv_vcpu_t *v);
/* Drop the queued last references; call with the PV lock released. */
void mv__pv_drain(mv_host_t *h, struct pv_domain *pd);

static inline uint64_t *mv__pv_table(const mv_host_t *h, mv_mfn_t mfn)
{
    return (uint64_t *)mv_frame_va(h, mfn);
}

/* Check an entry's bits for its level and slot (not its target). 0 or an error. */
int mv__pv_check_bits(struct pv_ctx *c, unsigned level, unsigned slot, uint64_t e);
/*
 * Take a root reference (a pin, a base pointer, an upper-level entry) of table type
 * `level` on mfn, validating what needs it. 0 held; PV_YIELD preempted (the vCPU's
 * continuation holds it); an error: nothing held (a long rollback may continue on the vCPU).
 */
int mv__pv_get_root(struct pv_ctx *c, mv_mfn_t mfn, unsigned level);
/* Drop a root reference on a validated table; PV_DONE_DEFERRED when its release continues later. */
int mv__pv_put_root(struct pv_ctx *c, mv_mfn_t mfn);
/* Write one entry of a validated table (mmu_update). 0, PV_YIELD, PV_DONE_DEFERRED or error. */
int mv__pv_mod_entry(struct pv_ctx *c, mv_mfn_t tbl, uint64_t *tab, unsigned level, unsigned slot,
                  uint64_t val);
/*
 * Settle the vCPU's open continuation unless it is (cont_mfn, cont_level): a validation is
 * rolled back, a release finished. 0 or PV_YIELD.
 */
int mv__pv_settle(struct pv_ctx *c, mv_mfn_t cont_mfn, unsigned cont_level);
/* The general reference a PV holder drops (queued when it may be the last). */
void mv__pv_put_ref(struct pv_ctx *c, struct mv_frame *f);

struct pv_linear *mv__pv_linear_find(struct pv_domain *pd, mv_mfn_t mfn);

/* ---- module.c --------------------------------------------------------------------------- */

extern const struct mv_module_ops mv__pv_module;

#endif
