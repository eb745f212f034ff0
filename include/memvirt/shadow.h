/*
 * memvirt/shadow.h - shadow page tables for HVM guests (paging mode MV_PAGING_SHADOW).
 *
 * The guest keeps its own x86-64 4-level tables in its own memory; the engine keeps shadow
 * tables (guest virtual -> machine) that the hardware walks, built lazily on page faults.
 * Every guest frame that has a shadow (a guest page-table frame) is read-only through
 * every shadow, so the guest's writes to its tables trap and come back here to be
 * emulated and revalidated. Shadow entries hold no frame references: coherence with the
 * p2m comes from an rmap (gfn -> shadow leaves) and the p2m listener.
 *
 * Rights of a shadow leaf are the guest entry's AND the p2m type's: read-only for ram_ro,
 * ram_shared, ram_logdirty and any frame the guest uses as a page table; a guest leaf with
 * its dirty bit clear is mapped read-only until the first write sets it. The hardware runs
 * with the guest's CR0.WP, CR4.SMEP/SMAP and EFER.NXE; shadow rights mirror the guest's.
 *
 * Concurrency: faults and emulated writes from different vCPUs of a domain may run at the
 * same time (one shadow lock per domain); one vCPU's calls come from one thread at a time.
 */
#ifndef MEMVIRT_SHADOW_H
#define MEMVIRT_SHADOW_H

#include <memvirt/mm.h>

#ifdef __cplusplus
extern "C" {
#endif

/* x86 page-fault error code bits. */
#define MV_PFEC_P 0x01u    /* the entry was present (a protection fault) */
#define MV_PFEC_W 0x02u    /* a write */
#define MV_PFEC_U 0x04u    /* a user-mode access */
#define MV_PFEC_RSVD 0x08u /* a reserved bit was set in an entry */
#define MV_PFEC_ID 0x10u   /* an instruction fetch (only reported with EFER.NXE or CR4.SMEP) */

/* `access` flags of a fault or a walk (SMAP needs them). */
#define MV_SHADOW_ACC_AC 0x1u       /* EFLAGS.AC was set */
#define MV_SHADOW_ACC_IMPLICIT 0x2u /* an implicit supervisor access (GDT, IDT, TSS ...) */

enum mv_shadow_kind {
    MV_SHADOW_FIXED = 0,   /* the shadows now allow the access (or were fine): retry */
    MV_SHADOW_INJECT = 1,  /* the guest's own tables refuse it: inject #PF with error_code */
    MV_SHADOW_EMULATE = 2, /* emulate the instruction; send its write to mv_shadow_emulate_write */
    MV_SHADOW_MMIO = 3,    /* the address is not RAM: emulate a device access at gpa */
    MV_SHADOW_DENIED = 4,  /* the p2m refuses the access (ram_ro written, access mask) */
    MV_SHADOW_NR_KINDS = 5
};

struct mv_shadow_outcome {
    uint32_t kind;       /* enum mv_shadow_kind */
    uint32_t error_code; /* INJECT: the #PF error code the guest must see */
    mv_paddr_t gpa;      /* EMULATE, MMIO: the guest-physical address of the access */
};

/*
 * Load a guest CR3: the machine address of the shadow root to load comes back in *root.
 * The root is found or built; a vCPU keeps its last few roots. MV_EINVAL not a shadow
 * domain or cr3 beyond the guest's width, MV_EFAULT cr3 names no RAM, MV_ESRCH dying,
 * MV_ENOMEM no shadow frame could be had.
 */
MV_API int mv_shadow_set_cr3(mv_vcpu_t *v, uint64_t guest_cr3, mv_paddr_t *root);

/*
 * A #PF taken while the vCPU ran on its shadow root: `error_code` as the hardware gave it
 * (only its W, U and I/D bits are read), `access` MV_SHADOW_ACC_*. The guest's tables are
 * walked (accessed and dirty bits set as hardware would), then the shadows are built down
 * to the leaf or the outcome says what the caller does. MV_ESRCH dying, MV_ENOMEM.
 */
MV_API int mv_shadow_page_fault(mv_vcpu_t *v, uint64_t gva, uint32_t error_code, uint32_t access,
                                struct mv_shadow_outcome *out);

/*
 * The write of an emulated instruction: `len` bytes (1..4096) at gpa, inside one page (a
 * page-crossing write is the caller's to split: MV_EINVAL). The target frame is held
 * across the write; every entry it touches is revalidated in every shadow of the frame.
 * MV_EFAULT no RAM there (or removed meanwhile), MV_EACCES ram_ro or a p2m access mask
 * without write, MV_EOPNOTSUPP ram_shared, MV_EINVAL bad arguments.
 */
MV_API int mv_shadow_emulate_write(mv_vcpu_t *v, mv_paddr_t gpa, const void *bytes, size_t len);
/*
 * Compare-and-exchange form (LOCK CMPXCHG of 1, 2, 4 or 8 naturally aligned bytes): 0 and
 * the write done when the memory held `expected`; MV_EAGAIN (nothing written) with
 * *expected updated otherwise.
 */
MV_API int mv_shadow_emulate_cmpxchg(mv_vcpu_t *v, mv_paddr_t gpa, uint64_t *expected,
                                     uint64_t desired, size_t len);

/* The guest executed INVLPG gva: the shadow leaf is dropped, the address flushed. */
MV_API int mv_shadow_invlpg(mv_vcpu_t *v, uint64_t gva);
/* Flush every linear translation of the vCPU (a CR3 write without PGE, INVPCID all). */
MV_API int mv_shadow_flush(mv_vcpu_t *v);
/* Drop every shadow of the domain except the roots vCPUs hold (rebuilt on demand). */
MV_API int mv_shadow_blow(mv_domain_t *d);

/*
 * Guest-virtual -> guest-physical for the hypervisor's instruction emulator: the walk a
 * hardware access of kind `error_code` (W/U/ID bits) would do, accessed/dirty bits
 * included. 0 with *gpa; MV_EFAULT with *pfec the #PF error code to inject.
 */
MV_API int mv_shadow_gva_to_gpa(mv_vcpu_t *v, uint64_t gva, uint32_t error_code, uint32_t access,
                                mv_paddr_t *gpa, uint32_t *pfec);

/*
 * A pool of fixed size, `frames` (floor and ceiling both; mv_domain_config's
 * shadow_pool_pages and shadow_pool_max_pages set them at creation, and the pool sizes
 * itself between them). Below MV_SHADOW_FLOOR_PER_VCPU per vCPU (its roots, a full path and
 * working room) or above MV_SHADOW_POOL_MAX MV_EINVAL; MV_EBUSY once shadows exist.
 */
MV_API int mv_shadow_set_budget(mv_domain_t *d, uint64_t frames);
/*
 * Shrink the pool now to what its live shadows need (never under the floor) and give the
 * free frames back to the host heaps; a hypervisor calls it from a timer or when the host
 * runs short (the pool also does it by itself as faults come). MV_EINVAL not shadow.
 */
MV_API int mv_shadow_trim(mv_domain_t *d);

/*
 * Size-versioned: fields are only ever appended. A caller built before a field existed
 * passes the smaller size it knows and gets the fields that fit (the oldest layout ends
 * with `zapped`); a smaller size than that is MV_EINVAL.
 */
struct mv_shadow_stats {
    size_t size;
    uint64_t budget;           /* pool frames allowed */
    uint64_t pool_frames;      /* frames the pool holds (in use, free, in vCPU caches) */
    uint64_t shadows[7];       /* in use by type: [1..4] L1..L4, [5] 2 MiB splinters, [6] 1 GiB */
    uint64_t faults[MV_SHADOW_NR_KINDS]; /* by enum mv_shadow_kind */
    uint64_t emulated_writes;
    uint64_t evictions;
    uint64_t zapped;           /* leaves removed by p2m changes and INVLPG */
    /* Shadow bytes (pool frames, 4 KiB each, plus their per-entry metadata) per GiB of
     * guest memory the domain owns; 0 when it owns none. */
    uint64_t bytes_per_gib;
    /* Out-of-sync L1s: out of sync now, times unsynced and resynced, and the entries the
     * resyncs fixed (each was at least one guest write that did not trap). */
    uint64_t oos_pages, unsyncs, resyncs, resync_fixed;
    /* Heuristics: frames unshadowed because written while unused or written in bulk (a
     * string copy or fill of 64 entries or more at once), or emptied by the guest. */
    uint64_t unshadowed_early, unshadowed_freed;
    /* The self-sizing pool: its bounds (budget moves between them), how often it grew and
     * shrank, and the shadows built again after being evicted (what makes it grow). */
    uint64_t pool_floor, pool_ceiling, pool_grows, pool_shrinks, rebuilds;
};
MV_API int mv_shadow_stats(const mv_domain_t *d, struct mv_shadow_stats *st);

#ifdef __cplusplus
}
#endif
#endif
