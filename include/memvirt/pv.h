/*
 * memvirt/pv.h - PV page-table validation: mmu_update, mmuext_op, pinning, base pointers.
 *
 * A PV guest's page tables hold machine frame numbers and the hardware walks them as they
 * are, so every entry is checked before it reaches a table, as in Xen. The model:
 *
 *  - A frame used as a page table of level n has page type Ln (memvirt/mm.h). Entries of a
 *    validated table hold references: an L1 entry a general reference on the frame it maps
 *    (and a writable-type reference when it maps it writable); an L2/L3/L4 entry a general
 *    and an L(n-1) typed reference on the table it points at. Types exclude each other, so a
 *    frame that is a table anywhere is writable nowhere.
 *  - Taking a table type on an unvalidated frame validates it, and first the unvalidated
 *    tables below it, depth first, without recursion on guest data. The work is budgeted
 *    (mv_pv_set_budget): when the budget runs out the call returns MV_EAGAIN, the progress
 *    stays in the frames (partial validation), and repeating the same request continues.
 *    A vCPU has at most one such open continuation; any other PV call on that vCPU first
 *    rolls it back (releasing every reference it took). A validation refused half-way
 *    releases everything it took before the call returns its error; only when that release
 *    is longer than one budget (a tree validated over several calls) does its rest run at
 *    the start of the vCPU's next call, which returns MV_EAGAIN until it is done.
 *  - When the last type reference of a table goes, the table is devalidated: its entries'
 *    references are released, tables below that lose their last type reference with them.
 *    Big trees are devalidated in budgeted slices; what is left is kept on the vCPU (Xen's
 *    old_guest_table) and finished at the start of its next PV call, which returns
 *    MV_EAGAIN (nothing else done) until it is.
 *  - TLBs: the guest flushes its own mappings after reducing them (the flush operations
 *    below); a frame never changes type or leaves the domain while a vCPU may still hold a
 *    writable translation of it or a paging-structure entry that walks it (the flush clock).
 *
 * Entry rules for 4-level (x86-64) guests. Bits: P 0, RW 1, US 2, PWT 3, PCD 4, A 5, D 6,
 * PS/PAT 7, G 8, available 9-11, address 12-51, available 52-58, protection key 59-62,
 * NX 63. W = the domain's physical-address width (mv_domain_config.phys_bits).
 *  - Present entries, every level: address bits W-51 set: MV_ERANGE. Bits 52-62 set:
 *    MV_EINVAL.
 *  - L1: any other bit allowed. The frame must be one the domain owns (MV_EXDEV another
 *    domain's, MV_EPERM the engine's or nobody's, MV_ERANGE no such frame); writable
 *    mappings need it free of any other type (MV_EBUSY).
 *  - L2/L3: PS set is a superpage: MV_EOPNOTSUPP (none are offered). L2/L3/L4: PWT, PCD and
 *    G are refused (MV_EINVAL), as is PS at L4. The target must be a table of the next level
 *    down (MV_EBUSY for a frame in use with another type or partly validated).
 *  - L4 slots MV_PV_L4_RESERVED_FIRST..LAST are the hypervisor's: any non-zero entry there
 *    is refused with MV_EPERM.
 *  - Linear (same-level) entries at L2-L4, only with MV_DOMF_LINEAR_PT (else MV_EPERM):
 *    read-only (MV_EACCES), to a validated table of the same domain (MV_EXDEV), never
 *    chained: a table that holds linear entries cannot be the target of one and the
 *    reverse (MV_EBUSY); at most MV_PV_LINEAR_TABLES tables per domain take part
 *    (MV_ENOSPC). An entry pointing at its own table holds no reference.
 *  - Not-present entries: any bits, except an address field that names host memory (below
 *    the end of machine memory, and not zero), which could leak through speculative walks
 *    (XSA-273): MV_EFAULT.
 *  - An update that changes only the A and D bits of a present entry keeps its references
 *    (fast path) after the same flag checks.
 *
 * Concurrency: calls for different domains run in parallel; one domain's PV calls serialize
 * on its PV lock. A vCPU is driven by one thread at a time.
 */
#ifndef MEMVIRT_PV_H
#define MEMVIRT_PV_H

#include <memvirt/mm.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MV_PV_ENTRIES 512u
#define MV_PV_L4_RESERVED_FIRST 256u /* hypervisor slots of every L4 table */
#define MV_PV_L4_RESERVED_LAST 271u
#define MV_PV_LINEAR_TABLES 64u      /* tables of one domain that may take part in linear entries */

/* Page-table entry bits. */
#define MV_PTE_P (1ull << 0)
#define MV_PTE_RW (1ull << 1)
#define MV_PTE_US (1ull << 2)
#define MV_PTE_PWT (1ull << 3)
#define MV_PTE_PCD (1ull << 4)
#define MV_PTE_A (1ull << 5)
#define MV_PTE_D (1ull << 6)
#define MV_PTE_PS (1ull << 7)
#define MV_PTE_PAT (1ull << 7)
#define MV_PTE_G (1ull << 8)
#define MV_PTE_NX (1ull << 63)
#define MV_PTE_ADDR_MASK 0x000ffffffffff000ull

/* ---- mmu_update ---------------------------------------------------------------------- */

/* Low two bits of mv_pv_mmu_update.ptr */
#define MV_PV_MMU_NORMAL_PT_UPDATE 0u /* the only command: write a page-table entry */
#define MV_PV_MMU_CMD_MASK 3u

struct mv_pv_mmu_update {
    uint64_t ptr; /* machine address of the 8-byte entry | command */
    uint64_t val; /* the new entry */
};

/*
 * Apply `count` updates for vCPU v's domain, in order. The entry's frame must be the
 * domain's (MV_EXDEV, MV_EPERM, MV_ERANGE) and either a validated table (the new entry is
 * checked for its level, its references taken before the old ones are dropped) or a frame
 * the domain may write (a plain write). The address must be 8-byte aligned (MV_EINVAL);
 * other commands: MV_EOPNOTSUPP. A refused update changes nothing and stops the batch with
 * *done = its index. MV_EAGAIN: preempted, *done updates completed; call again with the
 * rest (the same update again, when it was a validation that ran out of budget).
 * MV_ESRCH dying domain.
 */
MV_API int mv_pv_mmu_update(mv_vcpu_t *v, const struct mv_pv_mmu_update *reqs, uint32_t count,
                            uint32_t *done);

/* ---- mmuext_op ------------------------------------------------------------------------ */

enum mv_pv_mmuext_cmd {
    MV_PV_PIN_L1_TABLE = 0,
    MV_PV_PIN_L2_TABLE = 1,
    MV_PV_PIN_L3_TABLE = 2,
    MV_PV_PIN_L4_TABLE = 3,
    MV_PV_UNPIN_TABLE = 4,
    MV_PV_NEW_BASEPTR = 5,      /* arg = L4 mfn, or MV_INVALID_MFN for none */
    MV_PV_TLB_FLUSH_LOCAL = 6,
    MV_PV_INVLPG_LOCAL = 7,     /* arg = canonical linear address */
    MV_PV_TLB_FLUSH_ALL = 10,   /* every vCPU of the domain */
    MV_PV_INVLPG_ALL = 11,
    MV_PV_NEW_USER_BASEPTR = 15, /* arg = L4 mfn, or MV_INVALID_MFN for none */
};

struct mv_pv_mmuext_op {
    uint32_t cmd; /* enum mv_pv_mmuext_cmd */
    uint32_t pad; /* must be 0 */
    uint64_t arg; /* mfn, or linear address */
};

/*
 * Run `count` extended operations for vCPU v, in order, with mv_pv_mmu_update's batch
 * rules. Pin: MV_EALREADY pinned, MV_EBUSY a conflicting type, the validation's errors.
 * Unpin: MV_EINVAL not pinned. Base pointers: the frame gets an L4 typed reference (validated
 * as for a pin); the old one is released. Unknown command or non-zero pad: MV_EINVAL;
 * non-canonical INVLPG address: MV_EINVAL.
 */
MV_API int mv_pv_mmuext_op(mv_vcpu_t *v, const struct mv_pv_mmuext_op *ops, uint32_t count,
                           uint32_t *done);

/*
 * Entries examined (validated or released) per call before it is preempted; 0 restores
 * the default (MV_PV_DEFAULT_BUDGET). MV_ESRCH dying.
 */
#define MV_PV_DEFAULT_BUDGET 65536u
MV_API int mv_pv_set_budget(mv_domain_t *d, uint32_t entries);

/* The vCPU's base pointers (MV_INVALID_MFN for none). */
MV_API int mv_pv_get_baseptrs(const mv_vcpu_t *v, mv_mfn_t *kernel, mv_mfn_t *user);

/* ---- Statistics ------------------------------------------------------------------------ */

enum mv_pv_refusal {
    MV_PV_REFUSE_ADDRESS = 0,   /* misaligned or unknown entry address, bad command */
    MV_PV_REFUSE_OWNER,         /* a frame of another domain, of the engine, or none */
    MV_PV_REFUSE_FLAGS,         /* disallowed flag bits, reserved L4 slots */
    MV_PV_REFUSE_RESERVED,      /* address bits beyond the guest's width */
    MV_PV_REFUSE_SUPERPAGE,     /* PS at L2/L3 */
    MV_PV_REFUSE_NOT_PRESENT,   /* not-present entry naming host memory */
    MV_PV_REFUSE_TYPE,          /* type conflict, partly validated target */
    MV_PV_REFUSE_LINEAR,        /* linear entries: disabled, writable, chained, table full */
    MV_PV_REFUSE_PIN,           /* double pin, unpin of an unpinned frame */
    MV_PV_REFUSE_OVERFLOW,      /* a count would overflow */
    MV_PV_REFUSE_OTHER,         /* bad arguments, unknown commands */
    MV_PV_REFUSE_NR
};

struct mv_pv_stats {
    size_t size;              /* sizeof(struct mv_pv_stats) */
    uint64_t tables[4];       /* validated tables now, by level (L1 .. L4) */
    uint64_t partial;         /* tables partly validated or devalidated now */
    uint64_t pinned;          /* pinned tables now */
    uint64_t validations;     /* tables validated, ever */
    uint64_t devalidations;   /* tables devalidated, ever */
    uint64_t updates;         /* table entries written through mmu_update */
    uint64_t fast_updates;    /* of which A/D-only updates */
    uint64_t plain_writes;    /* mmu_update writes to non-table frames */
    uint64_t preemptions;     /* calls that returned MV_EAGAIN */
    uint64_t flushes;         /* flush operations run */
    uint64_t refusals[MV_PV_REFUSE_NR];
};

MV_API int mv_pv_stats(mv_domain_t *d, struct mv_pv_stats *st);

#ifdef __cplusplus
}
#endif
#endif
