/*
 * memvirt/p2m.h - the per-domain guest-physical -> machine map (P2M).
 *
 * Every domain, PV or HVM, has one; it is authoritative. It is a 4-level radix of 512-entry
 * tables in the Intel EPT entry format, so a hypervisor with EPT can point the EPT base at
 * mv_p2m_root(): read/write/execute rights, the memory type (write-back for RAM,
 * uncacheable for mmio), the leaf bit, the frame number, and the p2m type in bits 52-56.
 * Leaves are 4 KiB, 2 MiB or 1 GiB (orders 0, 9, 18).
 *
 * Ownership: an entry that maps RAM holds the frame's allocation reference; the frame's
 * m2p back-pointer names the gfn. Lookups are lock-free; updates serialize on the domain's
 * p2m lock. Listeners (shadow, sharing) hear about every change through start/end range
 * notifications, as KVM's mmu_notifier does.
 */
#ifndef MEMVIRT_P2M_H
#define MEMVIRT_P2M_H

#include <memvirt/mm.h>

#ifdef __cplusplus
extern "C" {
#endif

enum mv_p2m_type {
    MV_P2M_INVALID = 0,      /* nothing mapped */
    MV_P2M_RAM_RW = 1,       /* ordinary guest RAM */
    MV_P2M_RAM_RO = 2,       /* RAM the guest may only read */
    MV_P2M_RAM_LOGDIRTY = 3, /* RAM, write-protected while log-dirty tracks it */
    MV_P2M_RAM_SHARED = 4,   /* a copy-on-write shared frame */
    MV_P2M_MMIO_DIRECT = 5,  /* device memory passed through, uncacheable */
    MV_P2M_POD = 6,          /* reserved: populate-on-demand */
    MV_P2M_PAGED_OUT = 7,    /* reserved: paged out */
    MV_P2M_NR_TYPES = 8,
};

#define MV_P2M_R 0x1u
#define MV_P2M_W 0x2u
#define MV_P2M_X 0x4u
#define MV_P2M_RWX (MV_P2M_R | MV_P2M_W | MV_P2M_X)

/* Memory types for mmio ranges (Intel's encoding). */
#define MV_P2M_MT_UC 0u
#define MV_P2M_MT_WC 1u
#define MV_P2M_MT_WB 6u

struct mv_p2m_entry {
    mv_mfn_t mfn;     /* the frame gfn maps to (inside a superpage: the 4 KiB frame) */
    uint32_t type;    /* enum mv_p2m_type */
    uint32_t access;  /* MV_P2M_R/W/X as the entry grants them */
    uint32_t order;   /* order of the leaf that maps gfn: 0, 9 or 18 */
    uint32_t mtype;   /* memory type */
    uint32_t special; /* 1: a special page (never ballooned, shared or reclaimed) */
};

/*
 * Translate one gfn without taking any lock; never sees a torn entry. 0 with the entry
 * (type MV_P2M_INVALID when nothing is mapped), MV_ERANGE beyond the guest's width.
 */
MV_API int mv_p2m_lookup(mv_domain_t *d, mv_gfn_t gfn, struct mv_p2m_entry *e);

/*
 * Translate many gfns at once (grant copies, migration, an emulator's bulk access): the
 * walks are interleaved so that their memory accesses overlap. out[i] answers gfns[i] as
 * mv_p2m_lookup would. MV_ERANGE (and nothing filled) if any gfn is beyond the width.
 */
MV_API int mv_p2m_lookup_many(mv_domain_t *d, const mv_gfn_t *gfns, size_t n,
                              struct mv_p2m_entry *out);

/*
 * Map [gfn, gfn + 2^order) to [mfn, ...) with a type and rights (order 0, 9 or 18, both
 * aligned). RAM types take frames the domain owns and holds unmapped (allocated, m2p
 * invalid): the entry takes over their allocation reference. Whatever was mapped there is
 * unmapped first; RAM it held goes back to the domain unmapped (not freed). MV_P2M_INVALID
 * unmaps. Changing part of a superpage splinters it. MV_EINVAL, MV_ERANGE, MV_EXDEV/MV_EPERM
 * (frames not the domain's), MV_EBUSY (a frame already mapped elsewhere, or a special gfn),
 * MV_ENOMEM (a table could not be allocated: nothing changed), MV_ESRCH (dying).
 */
MV_API int mv_p2m_set_entry(mv_domain_t *d, mv_gfn_t gfn, mv_mfn_t mfn, unsigned order,
                            unsigned type, unsigned access);

/*
 * Change every entry of type `from` in [first, first + count) to `to` (RAM types among
 * themselves). One listener notification for the range. Preemptible: MV_EAGAIN with *done
 * gfns handled. *done counts gfns examined.
 */
MV_API int mv_p2m_change_type_range(mv_domain_t *d, mv_gfn_t first, uint64_t count,
                                    unsigned from, unsigned to, uint64_t *done);

/*
 * Reservation ops (the hypervisor side of the balloon protocol), with Xen's names.
 * Each of the `count` extents starts at gfns[i] and covers 2^order gfns (aligned).
 * populate: frames from `node` (MV_NODE_ANY: the domain's affinity), mapped ram_rw,
 * known zero; stops at the domain's maximum (MV_ENOSPC) with *done extents completed.
 * decrease: unmaps and frees each extent's frames (decommitted, so resident memory drops);
 * MV_EBUSY for a frame with references beyond the p2m's own (PV types, pins, holds),
 * MV_ENOENT for a gfn with no RAM, MV_EPERM for mmio or special gfns.
 * Both: MV_EAGAIN after a slice of work, *done extents completed; call again with the rest.
 */
MV_API int mv_populate_physmap(mv_domain_t *d, const mv_gfn_t *gfns, uint64_t count,
                               unsigned order, uint32_t node, uint64_t *done);
MV_API int mv_decrease_reservation(mv_domain_t *d, const mv_gfn_t *gfns, uint64_t count,
                                   unsigned order, uint64_t *done);

/* Map [gfn, gfn + count) to machine addresses outside RAM (device memory) as mmio_direct. */
MV_API int mv_p2m_map_mmio(mv_domain_t *d, mv_gfn_t gfn, mv_mfn_t mfn, uint64_t count,
                           unsigned mtype);
/* Mark a RAM gfn special (1) or ordinary (0). */
MV_API int mv_p2m_set_special(mv_domain_t *d, mv_gfn_t gfn, int special);

/* Machine address of the top-level (PML4) table: what an EPT pointer names. */
MV_API mv_paddr_t mv_p2m_root(const mv_domain_t *d);

/*
 * Listeners (KVM's mmu_notifier protocol): before entries of [first, first + count) change,
 * invalidate_start is called (the in-progress count is up: listeners zap and flush what maps
 * the range); after, invalidate_end (the sequence number moves, the count goes down). A
 * frame is freed or reused only after the end. Called with the p2m lock held: a listener
 * may take its own lock but must not call a p2m mutator.
 */
struct mv_p2m_listener {
    void *ctx;
    void (*invalidate_start)(void *ctx, mv_domain_t *d, mv_gfn_t first, uint64_t count);
    void (*invalidate_end)(void *ctx, mv_domain_t *d, mv_gfn_t first, uint64_t count);
};
#define MV_P2M_MAX_LISTENERS 4
MV_API int mv_p2m_register_listener(mv_domain_t *d, const struct mv_p2m_listener *l);
MV_API int mv_p2m_unregister_listener(mv_domain_t *d, const struct mv_p2m_listener *l);
/* For readers that build from a p2m read: the sequence number, and whether a change is in flight. */
MV_API uint64_t mv_p2m_seq(const mv_domain_t *d);
MV_API uint32_t mv_p2m_in_progress(const mv_domain_t *d);

/* ---- Faults on guest-physical accesses (a HAP walker, an EPT-violation handler) ------ */

/* What the caller does after a p2m fault. */
enum mv_p2m_outcome {
    MV_P2M_RETRY = 0,       /* fixed (or already fine): run the access again */
    MV_P2M_EMULATE_MMIO = 1, /* device memory: emulate the access */
    MV_P2M_NO_MEMORY = 2,   /* nothing mapped: the guest touched a hole */
    MV_P2M_DENIED = 3,      /* the entry forbids it (e.g. a write to ram_ro) */
};

/*
 * A write hit a write-protected entry. ram_logdirty: the page is marked dirty, its entry
 * (splintered to 4 KiB if it was a superpage) becomes ram_rw; 0. ram_rw: nothing to do
 * (a stale translation); 0 - unless the entry's rights were narrowed without W (set_entry's
 * access mask): MV_EACCES, as for ram_ro. ram_shared: MV_EOPNOTSUPP until the sharing
 * module unshares. No RAM there: MV_ENOENT; mmio: MV_EPERM. MV_ERANGE beyond the width.
 * MV_ENOMEM no table frame for a splinter, MV_ESRCH dying, MV_EBUSY the dirty bitmap kept
 * changing under it (logging switched on or off meanwhile): the guest's retry faults again.
 */
MV_API int mv_p2m_write_fault(mv_domain_t *d, mv_gfn_t gfn);
/* Any EPT violation: `access` is MV_P2M_R/W/X; *outcome says what to do next. */
MV_API int mv_p2m_handle_violation(mv_domain_t *d, mv_gfn_t gfn, unsigned access,
                                   unsigned *outcome);

/* ---- Log-dirty (live migration) ------------------------------------------------------- */

/*
 * Enable: every RAM entry becomes ram_logdirty (one listener notification for the whole
 * guest); writes fault, are marked and made writable again. MV_EALREADY when on.
 * Disable: ram_logdirty back to ram_rw, 2 MiB leaves restored where 512 contiguous frames
 * allow, the bitmap freed. MV_EALREADY when off.
 * Enable and disable may race from two callers: they end in one consistent state.
 */
MV_API int mv_p2m_logdirty_enable(mv_domain_t *d);
MV_API int mv_p2m_logdirty_disable(mv_domain_t *d);
/*
 * Harvest and re-protect: for each gfn of [first, first + count), bit (gfn - first) of
 * `bitmap` says whether it was written since the last clean; those pages are
 * write-protected again. Preemptible: MV_EAGAIN with *done gfns handled (their bits are
 * written). *dirty counts the dirty pages found in this call. MV_EPERM when not logging,
 * MV_ENOSPC when bitmap_bits < count, MV_ERANGE beyond the guest.
 */
MV_API int mv_p2m_logdirty_peek_and_clean(mv_domain_t *d, mv_gfn_t first, uint64_t count,
                                          uint64_t *bitmap, uint64_t bitmap_bits,
                                          uint64_t *done, uint64_t *dirty);

/* ---- Guest-physical access for emulators and tools ------------------------------------ */

/*
 * Copy to or from guest-physical memory, across pages. Every page is checked first: an
 * mmio page or a hole anywhere in the range is MV_EFAULT and nothing is copied; a write to
 * ram_ro is MV_EACCES, to ram_shared MV_EOPNOTSUPP, to a frame in use as a page table
 * MV_EBUSY (it changes only through validated updates). Writes to log-dirty pages go through
 * the write-fault path and mark them dirty. Each frame is held while it is copied.
 */
MV_API int mv_guest_phys_read(mv_domain_t *d, mv_paddr_t gpa, void *buf, size_t len);
MV_API int mv_guest_phys_write(mv_domain_t *d, mv_paddr_t gpa, const void *buf, size_t len);

struct mv_p2m_stats {
    size_t size;
    uint64_t pages_by_order[3];           /* leaves of order 0, 9, 18 */
    uint64_t pages_by_type[MV_P2M_NR_TYPES]; /* 4 KiB pages mapped, by type */
    uint64_t table_frames;                /* p2m tables, all levels */
    uint64_t splinters;                   /* superpages split */
    uint64_t populated;                   /* frames populated (lifetime) */
    uint64_t decreased;                   /* frames given back (lifetime) */
    uint64_t bytes_per_gib;               /* table bytes per GiB of guest RAM mapped */
    uint32_t logdirty;                    /* 1 while log-dirty is on */
    uint64_t logdirty_rounds;             /* peek-and-clean passes that reached the end */
    uint64_t logdirty_last_round_dirty;   /* dirty pages the last full pass found */
    uint64_t logdirty_retyped;            /* entries re-typed by enable, clean and disable */
    uint64_t logdirty_splits;             /* superpages split by log-dirty write faults */
    uint64_t logdirty_collapsed;          /* 2 MiB leaves restored when logging ended */
    uint64_t write_faults;                /* log-dirty write faults fixed */
};
MV_API int mv_p2m_stats(const mv_domain_t *d, struct mv_p2m_stats *st);

#ifdef __cplusplus
}
#endif
#endif
