/*
 * memvirt/platform.h - the only door between the engine and the world around it.
 *
 * A hypervisor that links memvirt fills one `struct mv_platform` per host; on a Linux host
 * the default posix platform (memvirt/posix.h) does. The engine calls nothing else outside
 * the C library: no allocation, no locks of the OS, no clock, no printing.
 *
 * The contract of every hook, stated once:
 *  - Every hook receives the platform struct it was called through. A wrapper that replaces
 *    some hooks embeds a copy of another platform's struct as its first member (keeping
 *    `ctx`) and reaches its own state from the pointer (container_of).
 *  - Hooks are called with no engine lock held, except `tlb_flush` and `trace`, which may be
 *    called under engine locks and must not call back into the engine.
 *  - Hooks never fail silently: a hook that returns int returns 0 or a negative MV_E* code.
 *  - Hooks marked optional may be NULL.
 */
#ifndef MEMVIRT_PLATFORM_H
#define MEMVIRT_PLATFORM_H

#include <memvirt/common.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MV_MAX_NODES 64u
#define MV_MAX_SLOTS 256u
#define MV_MAX_VCPUS 128u
#define MV_SLOT_NONE UINT32_MAX

/* One NUMA node's machine memory: a contiguous range of frames mapped at `base`. */
struct mv_node_desc {
    mv_mfn_t first_mfn; /* first frame of the range */
    uint64_t nr_frames; /* frames in the range; ranges do not overlap, holes are allowed */
    void *base;         /* host address of first_mfn; frame f is at base + (f - first_mfn) * 4 KiB */
    uint32_t nr_cpus;   /* CPUs (processing units) local to the node */
    uint32_t os_index;  /* the node's number for the host OS, or UINT32_MAX if none */
};

/*
 * The machine: nodes and the distance matrix (ACPI SLIT convention: 10 is local, larger is
 * farther). Ranges are listed in node order with increasing first_mfn.
 */
struct mv_topology {
    uint32_t nr_nodes;
    uint32_t nr_cpus;
    struct mv_node_desc node[MV_MAX_NODES];
    uint8_t distance[MV_MAX_NODES][MV_MAX_NODES];
};

/* What a TLB flush must remove. */
enum mv_flush_scope {
    MV_FLUSH_LINEAR_ONE = 1,  /* the translation of one linear (guest-virtual) address */
    MV_FLUSH_LINEAR_ALL = 2,  /* every linear translation (global ones included) */
    MV_FLUSH_GUEST_PHYS = 3,  /* every guest-physical (EPT) translation, and what derives from it */
    MV_FLUSH_ALL = 4,         /* every translation of any kind (a frame leaves its owner) */
};

#define MV_DOMID_ALL 0xffffu /* in a flush request: every vCPU of every domain */

struct mv_flush_request {
    mv_domid_t domid;                         /* domain whose vCPUs flush, or MV_DOMID_ALL */
    uint16_t scope;                           /* enum mv_flush_scope */
    uint32_t nr_vcpus;                        /* bits meaningful in vcpu_mask */
    uint64_t vcpu_mask[MV_MAX_VCPUS / 64];    /* vCPUs of `domid` that must flush */
    uint64_t linear;                          /* the address, for MV_FLUSH_LINEAR_ONE */
};

enum mv_log_level { MV_LOG_ERROR = 0, MV_LOG_WARN = 1, MV_LOG_INFO = 2, MV_LOG_DEBUG = 3 };

/* A trace record: a type from the engine's trace list and up to three arguments. */
struct mv_trace_event {
    uint32_t type;
    mv_domid_t domid;
    uint16_t slot;
    uint64_t arg[3];
};

struct mv_platform {
    size_t size;  /* sizeof(struct mv_platform) */
    void *ctx;    /* the platform's own state */

    /*
     * Metadata memory for the engine's own structures (frame table, p2m bookkeeping, caches).
     * Returns `size` bytes aligned to `align` (a power of two, at most 4096), zero-filled, or
     * NULL. May be called with no engine lock held only. `meta_free` gets the same size back.
     */
    void *(*meta_alloc)(const struct mv_platform *p, size_t size, size_t align);
    void (*meta_free)(const struct mv_platform *p, void *ptr, size_t size);

    /* The machine. Stays valid and unchanged for the platform's lifetime. */
    const struct mv_topology *topology;

    /*
     * Machine memory. Frames start out decommitted (they read as zero). `mem_commit` is
     * optional: where it is NULL, a frame is committed by its first write. `mem_decommit`
     * releases the backing of [first, first + count) - afterwards the frames read as zero -
     * and is called in batches, with no engine lock held. Both return 0 or MV_EIO.
     */
    int (*mem_commit)(const struct mv_platform *p, mv_mfn_t first, uint64_t count);
    int (*mem_decommit)(const struct mv_platform *p, mv_mfn_t first, uint64_t count);

    /* Optional: a message from the engine; never called for routine success. */
    void (*log)(const struct mv_platform *p, int level, const char *msg);
    /* Optional: a trace record; may be called under engine locks. */
    void (*trace)(const struct mv_platform *p, const struct mv_trace_event *ev);

    /* A monotonic clock in nanoseconds. */
    uint64_t (*clock_ns)(const struct mv_platform *p);

    /*
     * Flush TLBs of the vCPUs named by the request, and return when they have flushed (or
     * will flush before they next run guest code). May be called under engine locks; must
     * not call into the engine. Optional for a host that never runs vCPUs.
     */
    void (*tlb_flush)(const struct mv_platform *p, const struct mv_flush_request *req);

    /*
     * The caller's slot: a small id, below max_slots, stable for the calling CPU (in a
     * hypervisor, with preemption off) or the registered thread (posix). Two callers that
     * run at the same time never share a slot. MV_SLOT_NONE when none can be had; the engine
     * then takes slower paths that need no slot.
     */
    uint32_t max_slots;
    uint32_t (*slot_id)(const struct mv_platform *p);

    /*
     * Optional: make every thread (CPU) that may be inside the engine execute a full
     * memory barrier before this returns - Linux's membarrier(PRIVATE_EXPEDITED), or an
     * IPI in a hypervisor. With it, lock-free readers (p2m lookups) announce themselves
     * with a plain store and the rare reclaimer pays for the ordering; without it, every
     * reader pays a locked instruction. Called with no engine lock held.
     */
    void (*barrier_all)(const struct mv_platform *p);
};

#ifdef __cplusplus
}
#endif
#endif
