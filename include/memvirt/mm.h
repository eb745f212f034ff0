/*
 * memvirt/mm.h - the host: machine memory, the frame table, per-node heaps, the audit.
 *
 * A host owns the machine memory the platform describes. Every machine frame has one
 * descriptor in the frame table and is in exactly one state: free (on a node heap, waiting
 * in the decommit queue, or parked in a per-slot cache), owned by a domain, shared, or held
 * by the engine (or by the embedder through mv_frame_alloc). mv_host_audit() checks that.
 *
 * Concurrency: calls on one host may come from many threads; each caller must have a slot
 * (struct mv_platform.slot_id). mv_host_destroy, mv_host_audit and mv_host_drain need the
 * host quiesced (no other call in flight).
 */
#ifndef MEMVIRT_MM_H
#define MEMVIRT_MM_H

#include <memvirt/common.h>
#include <memvirt/platform.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mv_host mv_host_t;

struct mv_host_config {
    size_t size;                  /* sizeof(struct mv_host_config) */
    /* With platform == NULL, the host builds the default posix platform from these two. */
    uint64_t mem_bytes;           /* machine memory (at least 2 MiB) */
    const char *topology;         /* see memvirt/posix.h; NULL: MEMVIRT_TOPOLOGY or the machine */
    /* Otherwise the host uses this platform (not owned; must outlive the host). */
    const struct mv_platform *platform;
    uint32_t slot_cache_frames;   /* order-0 frames a slot caches per node; 0: default (64) */
    uint32_t decommit_batch;      /* frames queued before a decommit batch; 0: default (512) */
};

MV_API int mv_host_create(const struct mv_host_config *cfg, mv_host_t **out);
/* Frees everything; the host must be quiesced. Safe on NULL. */
MV_API void mv_host_destroy(mv_host_t *h);
MV_API const struct mv_platform *mv_host_platform(const mv_host_t *h);
MV_API const struct mv_topology *mv_host_topology(const mv_host_t *h);

/* ---- Machine frames ------------------------------------------------------------------ */

#define MV_NODE_ANY UINT32_MAX

/* mv_frame_alloc flags */
#define MV_ALLOC_ZERO 0x1u       /* the frames read as zero (scrubbed unless known zero) */
#define MV_ALLOC_EXACT_NODE 0x2u /* no fallback to other nodes */

/*
 * Allocate 2^order contiguous, naturally aligned machine frames, from `node` (or the
 * caller's nearest node with MV_NODE_ANY), falling back to other nodes by distance unless
 * MV_ALLOC_EXACT_NODE. The frames are held by the caller until mv_frame_free.
 * MV_EINVAL bad order or flags, MV_ENODEV node out of range, MV_ENOMEM none left.
 */
MV_API int mv_frame_alloc(mv_host_t *h, unsigned order, uint32_t node, uint32_t flags,
                          mv_mfn_t *out);
/*
 * Free what mv_frame_alloc returned, with the same order. The frames are decommitted
 * (in batches) before they are handed out again. MV_ERANGE mfn outside machine memory,
 * MV_EALREADY already free, MV_EINVAL not the head of an allocation of that order,
 * MV_EPERM held by a domain or the engine rather than the caller, MV_EBUSY referenced.
 */
MV_API int mv_frame_free(mv_host_t *h, mv_mfn_t mfn, unsigned order);
/* Host address of a machine frame, or NULL outside machine memory. */
MV_API void *mv_frame_va(const mv_host_t *h, mv_mfn_t mfn);
/* Node of a machine frame, or MV_ERANGE. */
MV_API int mv_frame_node(const mv_host_t *h, mv_mfn_t mfn);

/*
 * Issue queued decommits now and return the caller's cached frames to the heaps, so that
 * resident memory matches the accounting. Any thread may call it.
 */
MV_API int mv_host_trim(mv_host_t *h);
/* mv_host_trim for every slot (quiesced host only). */
MV_API int mv_host_drain(mv_host_t *h);

/* ---- Statistics ---------------------------------------------------------------------- */

struct mv_node_stats {
    mv_mfn_t first_mfn;
    uint64_t total;        /* frames of the node */
    uint64_t free;         /* on the heap's free lists */
    uint64_t pending;      /* freed, waiting in the decommit queue */
    uint64_t cached;       /* parked in per-slot caches */
    uint64_t allocated;    /* held by domains, the engine or the embedder */
    uint64_t committed;    /* frames that may be resident (not known to be zero) */
    uint64_t free_by_order[MV_MAX_ORDER + 1]; /* free blocks of each order */
    uint64_t alloc_fallback; /* allocations served by this node for another node */
};

struct mv_host_stats {
    size_t size;              /* sizeof(struct mv_host_stats) */
    uint32_t nr_nodes;
    uint64_t total_frames;
    uint64_t free_frames;     /* free + pending + cached */
    uint64_t committed_frames;
    uint64_t overhead_bytes;      /* all engine metadata */
    uint64_t frametable_bytes;    /* frame descriptors */
    uint64_t heap_meta_bytes;     /* heap and slot-cache bookkeeping */
    uint64_t decommit_batches;
    uint64_t decommit_frames;
    uint64_t scrubbed_frames;     /* frames zeroed by the engine because not known zero */
    struct mv_node_stats node[MV_MAX_NODES];
};

MV_API int mv_host_stats(mv_host_t *h, struct mv_host_stats *st);

/* ---- The audit ----------------------------------------------------------------------- */

struct mv_audit_violation {
    const char *invariant; /* "I1" ... */
    const char *what;      /* short symbolic name of the check, e.g. "free-frame-owned" */
    mv_mfn_t mfn;          /* the frame, or MV_INVALID_MFN */
    uint32_t domid;        /* the domain, or UINT32_MAX */
    uint64_t detail[2];    /* values the check compared (expected, found) */
};

#define MV_AUDIT_MAX_RECORDED 64u

struct mv_audit_report {
    size_t size;           /* sizeof(struct mv_audit_report) */
    uint64_t checked_frames;
    uint64_t nr_violations; /* all found; the first MV_AUDIT_MAX_RECORDED are recorded */
    struct mv_audit_violation v[MV_AUDIT_MAX_RECORDED];
};

/*
 * Check every invariant over a quiesced host. 0 when clean; MV_EUCLEAN when violations
 * were found (listed in *rep when rep is not NULL). Never changes state.
 */
MV_API int mv_host_audit(mv_host_t *h, struct mv_audit_report *rep);

/* ---- Fault injection ----------------------------------------------------------------- */

/*
 * Make the named allocation point fail: after `skip` more successful passes, the next
 * `count` passes fail (count 0 disarms). Points: "heap.alloc" (machine frames), "meta.alloc"
 * (engine metadata). MV_ENOENT unknown name; MV_ENOSYS when not compiled in.
 */
MV_API int mv_host_inject_failure(mv_host_t *h, const char *point, uint64_t skip, uint64_t count);

#ifdef __cplusplus
}
#endif
#endif
