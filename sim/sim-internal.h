/*
 * sim/sim-internal.h - what the simulator's files share: the hardware vCPU, its TLB, the
 * x86 entry bits, and the machine's registry of attached domains.
 */
#ifndef MV_SIM_INTERNAL_H
#define MV_SIM_INTERNAL_H

#include "p2m-internal.h"
#include "sim.h"

/* x86-64 paging-structure entry bits (the walker's names; the PV module's are the same). */
#define X86_P (1ull << 0)
#define X86_RW (1ull << 1)
#define X86_US (1ull << 2)
#define X86_A (1ull << 5)
#define X86_D (1ull << 6)
#define X86_PS (1ull << 7)
#define X86_G (1ull << 8)
#define X86_NX (1ull << 63)
#define X86_ADDR 0x000ffffffffff000ull
#define X86_EFER_LMA (1ull << 10)
#define X86_CR0_PE (1ull << 0)

/* ---- TLB ---------------------------------------------------------------------------------- */

#define SIM_TLB_SETS 64u
#define SIM_TLB_WAYS 8u
#define SIM_TLB_SIZES 3u /* 4 KiB, 2 MiB, 1 GiB arrays */

/* Entry flags */
#define TLBF_W 0x01u  /* writable at every level */
#define TLBF_U 0x02u  /* user at every level */
#define TLBF_NX 0x04u /* execute-disable at some level (with EFER.NXE) */
#define TLBF_G 0x08u  /* global (leaf G with CR4.PGE) */
#define TLBF_D 0x10u  /* the leaf is dirty */

struct sim_path {
    uint64_t addr; /* where the guest entry is: gpa (HVM) or machine address (PV) */
    uint64_t val;  /* its value when the entry was filled, A/D bits cleared */
};

struct sim_tlbe {
    uint64_t tag;      /* va >> (12 + 9 * size) */
    uint64_t addr;     /* gpa (HVM) or machine address (PV) of the entry's first byte */
    mv_mfn_t mfn;      /* the entry's first 4 KiB frame */
    uint8_t valid;     /* live only while gen (and, unless global, ngen) match the TLB's */
    uint8_t flags;     /* TLBF_* */
    uint8_t ept;       /* HAP: EPT rights of the final translation (EPT_R/W/X) */
    uint8_t npath;
    uint32_t gorder;   /* the guest leaf's order (the entry may be smaller under HAP) */
    uint32_t gen, ngen;
    struct sim_path path[4];
};

/*
 * A full flush is O(1), as the hardware's is: it moves a generation number instead of
 * clearing 1536 entries. `gen` moves at every flush that drops global entries too, `ngen`
 * at every full flush; an entry is live while it matches both (a global one: gen only).
 */
struct sim_tlb {
    struct sim_tlbe e[SIM_TLB_SIZES][SIM_TLB_SETS][SIM_TLB_WAYS];
    uint8_t next[SIM_TLB_SIZES][SIM_TLB_SETS]; /* round-robin victim */
    uint32_t gen, ngen;
};

static inline bool mv__sim_tlbe_live(const struct sim_tlb *t, const struct sim_tlbe *e)
{
    return e->valid && e->gen == t->gen && ((e->flags & TLBF_G) || e->ngen == t->ngen);
}

/* Request bits (threaded mode): posted by any thread, handled by the vCPU's own thread. */
#define SIM_REQ_FLUSH 0x1u       /* drop every TLB entry (the engine's flush) */
#define SIM_REQ_GUEST_FLUSH 0x2u /* the guest's flush IPI: trapped to the engine under shadow */

/* vCPU modes (threaded mode), KVM's: a vCPU is waited for only while it runs guest code. */
#define SIM_OUTSIDE 0u
#define SIM_IN_GUEST 1u

struct mv_sim_vcpu {
    mv_sim_t *s;
    mv_vcpu_t *v;
    mv_domain_t *d;
    mv_host_t *h;
    uint32_t domid, idx;
    bool hap;                 /* HVM, nested paging: walks through the EPT-format p2m */
    bool shadow;              /* HVM, shadow paging: walks the engine's shadow tables */
    bool hvm;                 /* either: guest tables are read by guest-physical address */
    /* Shadow: the root the engine gave for the guest CR3 it was loaded with. */
    bool sh_loaded;
    uint64_t sh_cr3;
    uint64_t sh_root;
    mv_mfn_t root_override;
    /* What the TLB was filled under; a change is a CR write (sim_sync). */
    uint64_t seen_root;
    uint64_t seen_cr0, seen_cr4, seen_efer;
    uint32_t seen_flags;
    struct mv_sim_vcpu_stats st;
    /* Threaded mode: mode and req are shared; depth (guest-code nesting) is the owner's. */
    _Atomic uint32_t mode;
    _Atomic uint32_t req;
    uint32_t depth;
    uint64_t engine_t0; /* when the current engine call began */
    struct sim_tlb tlb;
};

struct sim_dom {
    mv_domain_t *d;
    uint32_t domid;
    uint32_t nr;
    struct mv_sim_vcpu **v;
};

struct mv_sim {
    struct mv_platform p;      /* a copy of the posix platform; tlb_flush replaced */
    struct mv_platform *posix; /* owned */
    mv_host_t *h;
    struct sim_dom *doms;
    uint32_t nr_doms, cap_doms;
    bool drop_flushes;
    bool threaded;             /* requests posted to vCPU threads (mv_sim_set_threaded) */
    _Atomic uint64_t flush_requests;
    _Atomic uint64_t flush_waits; /* threaded: requests that waited for a vCPU in guest code */
};

/* tlb.c */
void mv__sim_tlb_flush_one(struct mv_sim_vcpu *sv, uint64_t va);
void mv__sim_tlb_flush_all(struct mv_sim_vcpu *sv, bool keep_global);
struct sim_tlbe *mv__sim_tlb_find(struct mv_sim_vcpu *sv, uint64_t va);
struct sim_tlbe *mv__sim_tlb_victim(struct mv_sim_vcpu *sv, uint64_t va, unsigned size);
/* Base linear address of an entry (sign-extended). */
uint64_t mv__sim_tlbe_va(unsigned size, const struct sim_tlbe *e);

/*
 * machine.c, threaded mode. Guest code (a translation and the access it serves) runs
 * between guest_enter and guest_exit, which nest; an engine call made from guest code is
 * bracketed by engine_begin/engine_end (the vCPU is then outside guest code and never
 * waited for; the time between them is counted as engine time, in any mode). Pending requests are handled at entry, after every engine call and at
 * every poll, on the vCPU's own thread. All of these do nothing unless threaded.
 */
void mv__sim_guest_enter(struct mv_sim_vcpu *sv);
void mv__sim_guest_exit(struct mv_sim_vcpu *sv);
void mv__sim_engine_begin(struct mv_sim_vcpu *sv);
void mv__sim_engine_end(struct mv_sim_vcpu *sv);
void mv__sim_poll(struct mv_sim_vcpu *sv);

/* walk.c: may an access with these combined rights go ahead? */
bool mv__sim_permits(unsigned tflags, uint32_t op, uint32_t flags, uint64_t cr0, uint64_t cr4);
/* The page-fault error code of a failed access. */
uint32_t mv__sim_pf_code(bool present, bool rsvd, uint32_t op, uint32_t flags, uint64_t cr4,
                         uint64_t efer);
/* Host address of a machine frame, or NULL outside machine memory. */
static inline uint8_t *mv__sim_frame(const mv_host_t *h, mv_mfn_t mfn)
{
    struct mv_heap_node *n = mv__mfn_node(h, mfn);
    return n ? (uint8_t *)mv__frame_va_fast(n, mfn) : NULL;
}

/* oracle.c: the current (oracle) value of a guest entry recorded on a TLB entry's walk. */
bool mv__sim_path_read(struct mv_sim_vcpu *sv, uint64_t addr, uint64_t *val);

static inline uint64_t mv__sim_canon(uint64_t va)
{
    return (uint64_t)((int64_t)(va << 16) >> 16);
}

#endif
