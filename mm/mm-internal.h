/*
 * mm/mm-internal.h - the host, the frame table and the heaps, as the engine sees them.
 *
 * Shared by every engine folder (p2m/, pv/, shadow/, ...) and by the tests, never
 * installed. Public types are in include/memvirt/; everything here is mv__ and hidden.
 */
#ifndef MV_MM_INTERNAL_H
#define MV_MM_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

#include <memvirt/memvirt.h>

#include "lock.h"

/* ---- Graded checks (STYLE.md 5) ------------------------------------------------------ */

/*
 * MV_BUG: an engine bug (never a guest's input). Debug builds stop at once, keeping the
 * message where a debugger finds it (mv__bug_message); release builds do the same - an
 * engine that has lost its invariants must not go on handing out memory.
 */
_Noreturn void mv__bug(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define MV_BUG(...) mv__bug(__FILE__, __LINE__, __VA_ARGS__)
#define MV_ASSERT(c) do { if (MV_DEBUG >= 1 && !(c)) MV_BUG("assertion failed: %s", #c); } while (0)
#define MV_ASSERT2(c) do { if (MV_DEBUG >= 2 && !(c)) MV_BUG("assertion failed: %s", #c); } while (0)

#define MV_LIKELY(x) __builtin_expect(!!(x), 1)
#define MV_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define MV_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MV_CACHELINE 64

unsigned mv__lock_depth(void);

/* ---- Size-tagged structs ------------------------------------------------------------- */

/*
 * Copy a caller's size-tagged struct into a zeroed local of the engine's own size:
 * MV_EINVAL when the caller's struct is shorter than `min_size` (the first published
 * version), MV_E2BIG when it is longer than ours with a non-zero tail.
 */
int mv__copy_sized(void *dst, size_t dst_size, const void *src, size_t min_size);
/*
 * Ready a size-tagged out-struct the engine fills: MV_EINVAL unless the caller's is at
 * least ours; everything after the size field is zeroed (a longer struct keeps its tail).
 */
int mv__prepare_out(void *out, size_t ours);

/* ---- Frame descriptors --------------------------------------------------------------- */

/*
 * One per machine frame, 32 bytes. Every field is atomic because lock-free readers (p2m
 * lookups, reference takers handed a hostile frame number) may look at any frame at any
 * time; writers that own the frame's state (the heap under its lock, the owner of a
 * reference) use relaxed stores, which cost a plain store on x86.
 *
 *  count      general references (mm/ref: issue "Domains, references and page types")
 *  flags      MV_PGF_*: block head, block order, known-zero content
 *  type_info  page type, type count, validated / pinned / partial bits
 *  link       owned frame: the m2p back-pointer (gfn, or MV_INVALID_GFN);
 *             on a heap list: node-relative (next << 32 | prev) indices
 *  owner      a domain id, or one of MV_OWNER_*
 *  tlbflush   the flush-clock time of the last TLB flush this frame needs
 */
struct mv_frame {
    _Atomic uint32_t count;
    _Atomic uint32_t flags;
    _Atomic uint64_t type_info;
    _Atomic uint64_t link;
    _Atomic uint32_t owner;
    _Atomic uint32_t tlbflush;
};
_Static_assert(sizeof(struct mv_frame) <= 32, "frame descriptor must stay within 32 bytes");

/* Owners other than a domain id (domain ids are below MV_OWNER_FIRST_SPECIAL). */
#define MV_OWNER_FIRST_SPECIAL 0xffff0000u
#define MV_OWNER_FREE 0xffff0001u     /* on a buddy free list (head or tail of a free block) */
#define MV_OWNER_PENDING 0xffff0002u  /* freed, in the decommit queue */
#define MV_OWNER_CACHED 0xffff0003u   /* parked in a per-slot order-0 cache */
#define MV_OWNER_ANON 0xffff0004u     /* held by the embedder (mv_frame_alloc) */
#define MV_OWNER_INTERNAL 0xffff0005u /* engine-internal: tables, shadows, bitmaps, zero frame */
#define MV_OWNER_SHARED 0xffff0006u   /* copy-on-write shared frame */
#define MV_OWNER_TOPUP 0xffff0007u    /* in a per-domain top-up cache */

#define MV_PGF_HEAD 0x1u               /* first frame of a block (free, pending or allocated) */
#define MV_PGF_ORDER_SHIFT 1u
#define MV_PGF_ORDER_MASK (0x1fu << MV_PGF_ORDER_SHIFT)
#define MV_PGF_ZERO 0x40u              /* content known to be zero */
#define MV_PGF_ALLOCATED 0x80u         /* a domain frame holding its allocation reference */
#define MV_PGF_WSTAMP 0x100u           /* the stamp records a dropped writable or table use */

/* General reference counts: the allocation's plus every holder's; never above this. */
#define MV_REF_MAX 0x7fffffffu

/*
 * The type word: count in bits 0-30, state bits, the type in bits 48-51.
 * A type changes only when the count is zero.
 */
#define MV_PGT_COUNT_MASK 0x7fffffffull
#define MV_PGT_COUNT_MAX MV_PGT_COUNT_MASK
#define MV_PGT_VALIDATED (1ull << 32)
#define MV_PGT_PINNED (1ull << 33)
#define MV_PGT_PARTIAL (1ull << 34)
/*
 * Bits 35-47 belong to the module that validates a table type (PV keeps a partial
 * validation's progress there); mm clears them with the validated/partial bits when the
 * last type reference of a table goes, and never reads them.
 */
#define MV_PGT_MOD_SHIFT 35
#define MV_PGT_MOD_MASK (0x1fffull << MV_PGT_MOD_SHIFT)
#define MV_PGT_TYPE_SHIFT 48
#define MV_PGT_TYPE_MASK (0xfull << MV_PGT_TYPE_SHIFT)

static inline unsigned mv__pgt_type(uint64_t x)
{
    return (unsigned)((x & MV_PGT_TYPE_MASK) >> MV_PGT_TYPE_SHIFT);
}

static inline bool mv__pgt_is_table(unsigned type)
{
    return type >= MV_PGT_L1 && type <= MV_PGT_L4;
}

static inline unsigned mv__pgf_order(uint32_t flags)
{
    return (flags & MV_PGF_ORDER_MASK) >> MV_PGF_ORDER_SHIFT;
}

static inline uint32_t mv__pgf_head(unsigned order)
{
    return MV_PGF_HEAD | ((uint32_t)order << MV_PGF_ORDER_SHIFT);
}

#define MV_IDX_NIL 0xffffffffu

/* ---- The host ------------------------------------------------------------------------ */

/* Fault-injection points (mv_host_inject_failure). */
enum mv_fail_point {
    MV_FAIL_HEAP_ALLOC = 0,
    MV_FAIL_META_ALLOC = 1,
    MV_FAIL_NR
};

struct mv_failpoint {
    _Atomic uint64_t skip;
    _Atomic uint64_t count;
    _Atomic uint64_t hits; /* failures injected so far */
};

/*
 * One node's heap. Buddy free lists of orders 0..MV_MAX_ORDER (blocks naturally aligned in
 * machine frame numbers, never straddling the node's range), and the decommit queue: blocks
 * freed but not yet given back to the platform; they are never handed out from there.
 * Every frame on a free list is known zero unless a decommit failed (counted in
 * free_dirty, scrubbed when handed out).
 */
struct mv_heap_node {
    mv_spinlock_t lock;
    uint32_t id;
    mv_mfn_t first_mfn;
    uint64_t nr_frames;
    struct mv_frame *ft;
    uint8_t *base;

    /* under lock */
    uint32_t free_head[MV_MAX_ORDER + 1];
    uint64_t free_blocks[MV_MAX_ORDER + 1];
    uint64_t free_frames;
    uint64_t free_dirty;
    uint32_t pending_head;       /* singly linked through link's next half */
    uint64_t pending_frames;     /* in the queue */
    uint64_t decommitting;       /* taken off the queue, being decommitted */

    _Atomic uint64_t fallback_allocs;
} __attribute__((aligned(MV_CACHELINE)));

/*
 * A slot's cache of order-0 frames for one node. Only the slot's owner touches `mfn`;
 * `n` is atomic so that statistics can read it from another thread.
 */
struct mv_slot_cache {
    _Atomic uint32_t n;
    uint32_t home;   /* slot's home node + 1 (0: not chosen yet); only in the node-0 entry */
    mv_mfn_t mfn[];
};

/* Engine modules with per-domain state, in initialization order (teardown reverses). */
enum mv_module {
    MV_MOD_P2M = 0,
    MV_MOD_PV = 1,
    MV_MOD_SHADOW = 2,
    MV_MOD_SHARING = 3,
    MV_MOD_BALLOON = 4,
    MV_MOD_NR
};

struct mv_audit_ctx;

/*
 * What a module plugs into the domain lifecycle and the audit. Every hook is optional.
 *  domain_init      at creation, after mm's part; an error unwinds the creation
 *  domain_teardown  during destroy (domain dying); MV_EAGAIN to be called again
 *  domain_free      last, when nothing is left
 *  recount          add the references this module's structures hold to refs[] and
 *                   types[] (indexed by frame: see mv__audit_frame_index), for I3/I4
 *  audit            the module's own invariants
 */
struct mv_module_ops {
    const char *name;
    int (*domain_init)(mv_domain_t *d);
    int (*domain_teardown)(mv_domain_t *d);
    void (*domain_free)(mv_domain_t *d);
    void (*recount)(mv_host_t *h, struct mv_audit_ctx *ac);
    void (*audit)(mv_host_t *h, struct mv_audit_ctx *ac);
    /* The engine wrote [off, off + len) of gfn for a caller (mv_guest_phys_write), outside
     * the guest's own trapped paths: a module that derives state from guest memory
     * (shadows of guest page tables) brings it up to date. No lock held. */
    void (*phys_wrote)(mv_domain_t *d, mv_gfn_t gfn, unsigned off, size_t len);
};

struct mv_slot_epoch {
    _Atomic uint64_t e; /* 0: not reading; else the epoch the reader entered in */
} __attribute__((aligned(MV_CACHELINE)));

struct mv_host {
    const struct mv_platform *plat;
    struct mv_platform *owned_plat;  /* the posix platform the host built, if it did */
    struct mv_topology topo;
    uint32_t nr_nodes;
    struct mv_heap_node *node[MV_MAX_NODES];
    uint8_t fallback[MV_MAX_NODES][MV_MAX_NODES]; /* nodes by distance from each node */
    mv_mfn_t end_mfn;                /* one past the highest frame */
    uintptr_t linear_va;             /* non-zero: frame f is at linear_va + f * 4 KiB */
    uint64_t total_frames;

    uint32_t max_slots;
    uint32_t cache_max;              /* frames a slot cache holds per node */
    uint32_t decommit_batch;
    size_t cache_stride;             /* bytes per struct mv_slot_cache */
    uint8_t *caches;                 /* [slot][node] */
    _Atomic uint32_t next_home;

    _Atomic uint64_t meta_bytes;
    uint64_t frametable_bytes;
    uint64_t heap_meta_bytes;
    _Atomic uint64_t decommit_batches;
    _Atomic uint64_t decommit_frames;
    _Atomic uint64_t scrubbed_frames;
    _Atomic uint64_t decommit_errors;

    _Atomic uint32_t fail_armed;
    struct mv_failpoint fail[MV_FAIL_NR];

    /* The flush clock (flush.c). */
    _Atomic uint64_t flush_clock;  /* flushes asked for + 1; stamps are its low 32 bits */
    _Atomic uint32_t flushed_upto;
    _Atomic uint64_t flushes_avoided;

    /* Epoch reclamation (epoch.c). */
    _Atomic uint64_t epoch;
    _Atomic uint64_t anon_readers;
    struct mv_slot_epoch *slot_epoch;   /* [max_slots] */
    mv_spinlock_t limbo_lock;
    mv_mfn_t limbo_head;
    uint64_t limbo_frames;
    _Atomic bool limbo_nonempty;

    /* Domains (domain.c). */
    mv_rwlock_t domtable_lock;
    _Atomic(mv_domain_t *) *domains; /* [MV_DOMID_MAX + 1] */
    uint32_t nr_domains;
    const struct mv_module_ops *modules[MV_MOD_NR];
};

/* Host metadata, counted in overhead_bytes; "meta.alloc" can be made to fail. */
void *mv__meta_alloc(mv_host_t *h, size_t size);
void mv__meta_free(mv_host_t *h, void *p, size_t size);

void mv__log(const mv_host_t *h, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* True when the named point should fail now (consumes one pass). */
bool mv__fail_check_slow(mv_host_t *h, enum mv_fail_point fp);
static inline bool mv__should_fail(mv_host_t *h, enum mv_fail_point fp)
{
    if (!MV_HAVE_FAULT_INJECTION)
        return false;
    if (MV_LIKELY(!atomic_load_explicit(&h->fail_armed, memory_order_relaxed)))
        return false;
    return mv__fail_check_slow(h, fp);
}

/* ---- Frame table (frame.c) ----------------------------------------------------------- */

int mv__frametable_init(mv_host_t *h);
void mv__frametable_fini(mv_host_t *h);

/* The node holding mfn, or NULL outside machine memory. */
static inline struct mv_heap_node *mv__mfn_node(const mv_host_t *h, mv_mfn_t mfn)
{
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        struct mv_heap_node *n = h->node[i];
        if (mfn - n->first_mfn < n->nr_frames)
            return n;
    }
    return NULL;
}

/* The descriptor of mfn, or NULL outside machine memory (hostile numbers are fine). */
static inline struct mv_frame *mv__frame(const mv_host_t *h, mv_mfn_t mfn)
{
    struct mv_heap_node *n = mv__mfn_node(h, mfn);
    return n ? &n->ft[mfn - n->first_mfn] : NULL;
}

/* The frame number of a descriptor known to be in n. */
static inline mv_mfn_t mv__frame_mfn(const struct mv_heap_node *n, const struct mv_frame *f)
{
    return n->first_mfn + (mv_mfn_t)(f - n->ft);
}

static inline uint32_t mv__frame_owner(const struct mv_frame *f)
{
    return atomic_load_explicit(&f->owner, memory_order_acquire);
}

static inline void *mv__frame_va_fast(const struct mv_heap_node *n, mv_mfn_t mfn)
{
    return n->base + ((mfn - n->first_mfn) << MV_PAGE_SHIFT);
}

/* The host address of a frame known to be in machine memory (a table the engine owns). */
static inline void *mv__mfn_va(const mv_host_t *h, mv_mfn_t mfn)
{
    if (MV_LIKELY(h->linear_va))
        return (void *)(h->linear_va + (uintptr_t)(mfn << MV_PAGE_SHIFT));
    return mv__frame_va_fast(mv__mfn_node(h, mfn), mfn);
}

/* ---- Heaps (heap.c) ------------------------------------------------------------------ */

int mv__heap_init(mv_host_t *h);
void mv__heap_fini(mv_host_t *h);

/*
 * Allocate 2^order frames for `owner` (a domain id or MV_OWNER_INTERNAL/ANON/SHARED/TOPUP).
 * The frames come back with owner set, count 0, type_info 0, link MV_INVALID_GFN.
 * Never call with an engine lock held (it may decommit and call platform hooks).
 */
int mv__heap_alloc(mv_host_t *h, unsigned order, uint32_t node, uint32_t flags,
                   uint32_t owner, mv_mfn_t *out);
/*
 * Return a block allocated by mv__heap_alloc. The caller has checked ownership and that no
 * reference remains; the block goes to the slot cache (order 0) or the decommit queue.
 */
void mv__heap_free(mv_host_t *h, mv_mfn_t mfn, unsigned order);
/* Flush the decommit queues; with all_slots also empty every slot cache (quiesced only). */
int mv__heap_trim(mv_host_t *h, bool all_slots);
void mv__heap_node_stats(mv_host_t *h, uint32_t node, struct mv_node_stats *ns);
/* Frames parked in slot caches of a node (racy read, exact when quiesced). */
uint64_t mv__heap_cached(const mv_host_t *h, uint32_t node);

static inline struct mv_slot_cache *mv__slot_cache(const mv_host_t *h, uint32_t slot,
                                                   uint32_t node)
{
    return (struct mv_slot_cache *)(h->caches +
                                    ((size_t)slot * h->nr_nodes + node) * h->cache_stride);
}

/* ---- Domains and vCPUs (domain.c) --------------------------------------------------- */

struct mv_vcpu {
    mv_domain_t *d;
    uint32_t id;
    struct mv_vcpu_state state;    /* control registers a walker reads */
    uint64_t guest_table;          /* PV: kernel base pointer (mfn); HVM: guest CR3 */
    uint64_t guest_table_user;     /* PV: user base pointer */
    _Atomic uint32_t may_cache;    /* MV_VCPU_CACHE_*: what its TLB may hold */
    void *mod[MV_MOD_NR];          /* each module's per-vCPU state */
};

#define MV_VCPU_CACHE_LINEAR 0x1u
#define MV_VCPU_CACHE_GPHYS 0x2u

/* Destroy phases, kept in the domain so that preempted calls continue. */
enum mv_teardown_phase { MV_TD_LIVE = 0, MV_TD_MODULES, MV_TD_FRAMES, MV_TD_DONE };

struct mv_domain {
    mv_host_t *h;
    uint32_t domid;
    uint32_t type;
    uint32_t paging;
    uint32_t flags;
    uint32_t nr_vcpus;
    uint32_t node_affinity;
    uint32_t phys_bits;
    uint64_t shadow_pool_pages;       /* config: floor; 0: the shadow module's default */
    uint64_t shadow_pool_max_pages;   /* config: ceiling; 0: the shadow module's default */
    uint32_t shadow_oos_pages;        /* out-of-sync L1s per vCPU (0: none) */
    _Atomic uint64_t max_pages;
    _Atomic uint64_t pages;           /* frames owned (I2) */
    _Atomic uint64_t overhead_pages;  /* engine frames charged to it */
    _Atomic uint64_t overhead_bytes;  /* engine metadata charged to it */
    _Atomic uint64_t ballooned_pages;
    _Atomic uint64_t shared_pages;
    _Atomic bool dying;

    _Atomic bool teardown_busy;       /* a destroy call is running: others get MV_EAGAIN */
    enum mv_teardown_phase phase;
    int module_cursor;
    mv_mfn_t frame_cursor;

    void *mod[MV_MOD_NR];
    struct mv_vcpu *vcpu[];
};

static inline bool mv__domain_dying(const mv_domain_t *d)
{
    return atomic_load_explicit(&d->dying, memory_order_acquire);
}

/* The domain a frame's owner names, or NULL. */
static inline mv_domain_t *mv__domain_of_owner(const mv_host_t *h, uint32_t owner)
{
    if (owner > MV_DOMID_MAX || !h->domains)
        return NULL;
    return atomic_load_explicit(&h->domains[owner], memory_order_acquire);
}

/* The modules this library carries (lib/modules.c), installed in every host. */
extern const struct mv_module_ops *const mv__module_table[MV_MOD_NR];

/*
 * The descriptor of a frame d owns: 0, or MV_ERANGE outside machine memory, MV_EXDEV
 * another domain's, MV_EPERM no domain's (free, the engine's, the embedder's).
 */
static inline int mv__domain_frame(const mv_domain_t *d, mv_mfn_t mfn, struct mv_frame **out)
{
    struct mv_frame *f = mv__frame(d->h, mfn);
    if (!f)
        return MV_ERANGE;
    uint32_t owner = mv__frame_owner(f);
    if (owner != d->domid)
        return owner <= MV_DOMID_MAX ? MV_EXDEV : MV_EPERM;
    *out = f;
    return 0;
}

int mv__domains_init(mv_host_t *h);
void mv__domains_fini(mv_host_t *h);
void mv__host_register_module(mv_host_t *h, enum mv_module id, const struct mv_module_ops *ops);

/*
 * Frames for a domain: owner set, each frame its own order-0 block holding the allocation
 * reference, counted in d->pages. MV_ESRCH dying, MV_ENOSPC past max_pages.
 */
int mv__domain_alloc(mv_domain_t *d, unsigned order, uint32_t node, uint32_t flags,
                     mv_mfn_t *out);

/* ---- References, types, the flush clock (ref.c, flush.c) ---------------------------- */

/* General references. get: the frame must be owned by d (and d not dying). */
int mv__get_page(mv_domain_t *d, struct mv_frame *f);
/* Drop one; the last one frees the frame (flushing first if the clock says so). */
void mv__put_page(mv_host_t *h, struct mv_frame *f);
/* Typed references; the caller holds a general reference. */
int mv__get_page_type(mv_host_t *h, struct mv_frame *f, unsigned type);
int mv__put_page_type(mv_host_t *h, struct mv_frame *f);
int mv__page_type_validated(struct mv_frame *f);
/* Free a frame whose count the caller took from 1 to 0 itself (exclusive removal). */
void mv__frame_release(mv_host_t *h, struct mv_frame *f);
/* The same for 2^order contiguous, aligned frames of one owner, freed as one block. */
void mv__frame_release_block(mv_host_t *h, mv_mfn_t mfn, unsigned order);
/* Drop the allocation reference (the domain gives the frame up). */
int mv__drop_allocation(mv_host_t *h, struct mv_frame *f);

/* Stamp a frame: a mapping of it (writable or not) has just been removed. */
void mv__flush_stamp(mv_host_t *h, struct mv_frame *f, bool writable);
/* Flush everything unless a flush that started after the stamp has completed. */
void mv__flush_if_needed(mv_host_t *h, struct mv_frame *f, bool writable_only);
/* Ask the platform for a flush now; updates the clock. */
void mv__flush(mv_host_t *h, const struct mv_flush_request *req);

/* ---- Epoch reclamation (epoch.c) ------------------------------------------------------ */

int mv__epoch_init(mv_host_t *h);
void mv__epoch_fini(mv_host_t *h);
/*
 * A lock-free reader's section; returns the slot to pass to exit. Inline: lookups are the
 * engine's hottest path and the fewer instructions a walk takes, the more independent
 * walks the CPU overlaps.
 */
static inline uint32_t mv__epoch_enter(mv_host_t *h)
{
    uint32_t s = h->plat->slot_id(h->plat);
    if (MV_UNLIKELY(s >= h->max_slots)) {
        atomic_fetch_add_explicit(&h->anon_readers, 1, memory_order_seq_cst);
        return MV_SLOT_NONE;
    }
    uint64_t e = atomic_load_explicit(&h->epoch, memory_order_relaxed);
    if (MV_LIKELY(h->plat->barrier_all != NULL)) {
        /*
         * A plain store; the reclaimer's barrier_all orders it before our table reads as
         * far as the reclaimer can tell. The compiler must not move the walk above it.
         */
        atomic_store_explicit(&h->slot_epoch[s].e, e, memory_order_relaxed);
        __asm__ __volatile__("" ::: "memory");
    } else {
        atomic_exchange_explicit(&h->slot_epoch[s].e, e, memory_order_seq_cst);
    }
    return s;
}

static inline void mv__epoch_exit(mv_host_t *h, uint32_t slot)
{
    if (MV_UNLIKELY(slot == MV_SLOT_NONE))
        atomic_fetch_sub_explicit(&h->anon_readers, 1, memory_order_release);
    else
        atomic_store_explicit(&h->slot_epoch[slot].e, 0, memory_order_release);
}
/* An engine-internal frame unlinked from a lock-free structure: freed after readers leave. */
void mv__epoch_retire(mv_host_t *h, mv_mfn_t mfn);
/* Free what no reader can hold any more (all: everything; quiesced host only). No lock held. */
void mv__epoch_reclaim(mv_host_t *h, bool all);

/* ---- Audit (audit.c) ----------------------------------------------------------------- */

struct mv_audit_ctx {
    struct mv_audit_report *rep;
    uint64_t nr;
    /* References and type references the recount found, per frame (audit index). */
    uint32_t *refs;
    uint32_t *types;
};

/* A frame's index in the audit's per-frame arrays (frames of all nodes, in node order). */
uint64_t mv__audit_frame_index(const mv_host_t *h, mv_mfn_t mfn);
int mv__audit_machine(mv_host_t *h, struct mv_audit_ctx *ac, uint64_t *checked);

void mv__audit_report(struct mv_audit_ctx *ac, const char *inv, const char *what, mv_mfn_t mfn,
                      uint32_t domid, uint64_t expected, uint64_t found);

#endif
