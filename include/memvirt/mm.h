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
 * Free what mv_frame_alloc returned, with the same order, once (from one thread: two
 * racing frees of one block are the caller's bug). The frames are decommitted
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

/* ---- Domains ------------------------------------------------------------------------- */

typedef struct mv_domain mv_domain_t;
typedef struct mv_vcpu mv_vcpu_t;

#define MV_DOMID_MAX 0x7fefu /* ids 0 .. MV_DOMID_MAX; 0 is the control domain by convention */

enum mv_domain_type { MV_DOMAIN_PV = 1, MV_DOMAIN_HVM = 2 };
enum mv_paging_mode {
    MV_PAGING_PV = 0,     /* PV: the guest's own machine-address tables, validated */
    MV_PAGING_HAP = 1,    /* HVM with nested paging (EPT) */
    MV_PAGING_SHADOW = 2, /* HVM with shadow page tables */
};

#define MV_DOMF_LINEAR_PT 0x1u /* PV: allow read-only linear (self-referencing) table entries */
#define MV_DOMF_SHADOW_SYNC 0x2u /* shadow: keep every shadow in sync (no out-of-sync L1s) */

/* Shadow pool limits (frames): the floor per vCPU and the ceiling of a domain's pool. */
#define MV_SHADOW_FLOOR_PER_VCPU 16u
#define MV_SHADOW_POOL_MAX (1u << 22)
/* Out-of-sync L1 shadows a vCPU may have: the default and the most. */
#define MV_SHADOW_OOS_DEFAULT 6u
#define MV_SHADOW_OOS_MAX 64u

struct mv_domain_config {
    size_t size;             /* sizeof(struct mv_domain_config) */
    uint32_t domid;          /* 0 .. MV_DOMID_MAX, unused */
    uint32_t type;           /* enum mv_domain_type */
    uint32_t paging;         /* enum mv_paging_mode: PV for PV, HAP or SHADOW for HVM */
    uint32_t nr_vcpus;       /* 1 .. MV_MAX_VCPUS */
    uint64_t max_pages;      /* the most frames the domain may own; at most the host's total */
    uint32_t node_affinity;  /* the node frames come from, or MV_NODE_ANY */
    uint32_t flags;          /* MV_DOMF_* */
    uint32_t phys_bits;      /* guest physical-address width, 32..52; 0: 40 */
    uint32_t shadow_oos_pages; /* shadow: out-of-sync L1s per vCPU, 0: the default (6),
                                * at most MV_SHADOW_OOS_MAX; MV_DOMF_SHADOW_SYNC: none */
    /* Shadow paging: the shadow pool sizes itself between a floor and a ceiling, in frames.
     * Floor: 0: 64 + 16 per vCPU; at least 16 per vCPU (its roots, a full path and working
     * room). Ceiling: 0: the floor or a 64th of max_pages plus 256, whichever is more, and
     * the pool then also follows the guest's size (never above a 64th of the frames it owns
     * now plus 256); at most MV_SHADOW_POOL_MAX. Equal: a pool of fixed size. */
    uint64_t shadow_pool_pages;
    uint64_t shadow_pool_max_pages;
};

/*
 * Create a domain and its vCPUs. MV_EEXIST id in use, MV_ERANGE id above MV_DOMID_MAX,
 * MV_EINVAL bad type/paging/vCPU count/flags/width, MV_EOPNOTSUPP a paging mode this build
 * cannot run, MV_ENOMEM max_pages above the host (or no metadata), MV_ENODEV bad node.
 */
MV_API int mv_domain_create(mv_host_t *h, const struct mv_domain_config *cfg,
                            mv_domain_t **out);
/*
 * Destroy: the domain is dying from the first call on (nothing new is allocated, every
 * operation on it is refused with MV_ESRCH); each module tears down its state and every
 * frame the domain owns is returned. Preemptible: MV_EAGAIN means progress was kept,
 * call again. MV_EBUSY: frames are still held by references taken outside the domain
 * (mv_page_get); drop them and call again. 0: the domain is gone and d is invalid.
 */
MV_API int mv_domain_destroy(mv_domain_t *d);
/* The live (or dying) domain with that id, or NULL. */
MV_API mv_domain_t *mv_domain_lookup(mv_host_t *h, uint32_t domid);
MV_API uint32_t mv_domain_id(const mv_domain_t *d);
MV_API mv_host_t *mv_domain_host(const mv_domain_t *d);
/* Change the maximum (ballooning targets move it). MV_EBUSY below the pages owned now. */
MV_API int mv_domain_set_max_pages(mv_domain_t *d, uint64_t max_pages);

struct mv_domain_stats {
    size_t size;             /* sizeof(struct mv_domain_stats) */
    uint32_t domid;
    uint32_t type;
    uint32_t paging;
    uint32_t nr_vcpus;
    uint32_t node_affinity;
    uint32_t dying;
    uint64_t pages;          /* frames the domain owns (guest memory) */
    uint64_t max_pages;
    uint64_t overhead_pages; /* engine frames held for it (p2m tables, shadows, ...) */
    uint64_t overhead_bytes; /* engine metadata held for it (structures, vCPUs) */
    uint64_t ballooned_pages;
    uint64_t shared_pages;
};
MV_API int mv_domain_stats(const mv_domain_t *d, struct mv_domain_stats *st);

/*
 * Frames for a domain (the hypervisor's alloc_domheap_pages): 2^order frames from `node`
 * (MV_NODE_ANY: the domain's affinity), each owned by the domain and holding its
 * allocation reference. MV_ESRCH dying, MV_ENOSPC past max_pages, MV_ENOMEM none left.
 */
MV_API int mv_domain_alloc_frames(mv_domain_t *d, unsigned order, uint32_t node, uint32_t flags,
                                  mv_mfn_t *out);
/*
 * Drop the allocation reference of each of 2^order frames (aligned); a frame is freed when
 * its last reference goes. Checks all frames first: MV_ERANGE, MV_EINVAL misaligned,
 * MV_EXDEV owned by another domain, MV_EPERM not a domain's, MV_EALREADY already dropped.
 */
MV_API int mv_domain_free_frames(mv_domain_t *d, mv_mfn_t mfn, unsigned order);

/* ---- vCPUs ------------------------------------------------------------------------------ */

/* vCPU idx of a domain (0 .. nr_vcpus-1), or NULL. */
MV_API mv_vcpu_t *mv_domain_vcpu(mv_domain_t *d, uint32_t idx);
MV_API uint32_t mv_vcpu_id(const mv_vcpu_t *v);
MV_API mv_domain_t *mv_vcpu_domain(const mv_vcpu_t *v);

#define MV_CR0_WP (1ull << 16)
#define MV_CR0_PG (1ull << 31)
#define MV_CR4_PSE (1ull << 4)
#define MV_CR4_PAE (1ull << 5)
#define MV_CR4_PGE (1ull << 7)
#define MV_CR4_SMEP (1ull << 20)
#define MV_CR4_SMAP (1ull << 21)
#define MV_EFER_LME (1ull << 8)
#define MV_EFER_NXE (1ull << 11)

#define MV_VCPUF_GBPAGES 0x1u /* 1 GiB pages offered to the guest (else PS at L3 is reserved) */

/* The control state a page-table walker needs. */
struct mv_vcpu_state {
    size_t size; /* sizeof(struct mv_vcpu_state) */
    uint64_t cr0;
    uint64_t cr3;
    uint64_t cr4;
    uint64_t efer;
    uint32_t flags; /* MV_VCPUF_* */
};
MV_API int mv_vcpu_get_state(const mv_vcpu_t *v, struct mv_vcpu_state *st);
/* MV_ESRCH dying domain, MV_EINVAL unknown flags or a cr3 beyond the address width. */
MV_API int mv_vcpu_set_state(mv_vcpu_t *v, const struct mv_vcpu_state *st);

/* ---- References and page types ---------------------------------------------------------- */

/*
 * As in Xen: a frame's general reference count keeps it from being freed (the allocation
 * holds one); its type count keeps its type (page-table level, writable, shared) from
 * changing. A type changes only when its count is zero, so writable and page-table uses
 * exclude each other. Page-table types start unvalidated: the taker that set the type is
 * told to validate (MV_PAGE_VALIDATE) and then marks it validated or drops its reference.
 */
enum mv_page_type {
    MV_PGT_NONE = 0,
    MV_PGT_L1 = 1,
    MV_PGT_L2 = 2,
    MV_PGT_L3 = 3,
    MV_PGT_L4 = 4,
    MV_PGT_WRITABLE = 5,
    MV_PGT_SHARED = 6,
};
#define MV_PAGE_VALIDATE 1 /* positive: the caller set a page-table type and must validate */

/* A general reference on a frame the domain owns. MV_ERANGE, MV_EXDEV (another domain's),
 * MV_EPERM (not a domain's), MV_ESRCH (dying), MV_EOVERFLOW. */
MV_API int mv_page_get(mv_domain_t *d, mv_mfn_t mfn);
/* Drop one. MV_ENOENT when no reference beyond the allocation's is held. */
MV_API int mv_page_put(mv_domain_t *d, mv_mfn_t mfn);
/*
 * A general reference and a typed one (get_page_and_type). 0, MV_PAGE_VALIDATE, or:
 * MV_EBUSY the frame has another type in use, MV_EAGAIN another caller is validating it,
 * MV_EOVERFLOW, and mv_page_get's errors. Nothing is taken on error.
 */
MV_API int mv_page_get_typed(mv_domain_t *d, mv_mfn_t mfn, unsigned type);
/* After MV_PAGE_VALIDATE: the tables checked out. MV_EINVAL when nothing awaits validation. */
MV_API int mv_page_validated(mv_domain_t *d, mv_mfn_t mfn);
/* Drop both. MV_ENOENT when no typed reference is held. */
MV_API int mv_page_put_typed(mv_domain_t *d, mv_mfn_t mfn);

#define MV_PAGEF_ALLOCATED 0x1u /* holds its allocation reference */
#define MV_PAGEF_VALIDATED 0x2u
#define MV_PAGEF_PINNED 0x4u
#define MV_PAGEF_PARTIAL 0x8u

struct mv_page_info {
    size_t size;
    uint32_t owner;      /* domain id, or UINT32_MAX for a frame no domain owns */
    uint32_t refs;       /* general references */
    uint32_t type;       /* enum mv_page_type */
    uint32_t type_refs;
    uint32_t flags;      /* MV_PAGEF_* */
    uint32_t node;
    mv_gfn_t gfn;        /* the m2p back-pointer, or MV_INVALID_GFN */
};
MV_API int mv_page_info(const mv_host_t *h, mv_mfn_t mfn, struct mv_page_info *info);

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
    uint64_t tlb_flushes;         /* flushes the engine asked of the platform */
    uint64_t tlb_flushes_avoided; /* flushes the flush clock showed were already done */
    uint32_t nr_domains;
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
