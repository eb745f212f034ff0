/*
 * perf/bench_mm.c - machine-frame heap benchmarks and their same-run baseline.
 *
 *   mm/alloc_free_order0     mv_frame_alloc(order 0) then mv_frame_free; item = one pair
 *   mm/alloc_free_order9     the same with 2 MiB blocks (order 9)
 *   baseline/freelist_stack  pop + push on an intrusive singly linked free list (a stack)
 *                            of 32-byte frame descriptors, one stack per thread; item =
 *                            one pop + push
 *
 * Each runs with 1 and 2 threads, timed by the wall clock (throughput of all threads).
 * The host (1 GiB of machine memory, one node unless MEMVIRT_TOPOLOGY says otherwise) is
 * created by each run's setup and destroyed by its teardown, after checks that every frame
 * came back and that the audit is clean. The mm benchmarks also report frames_per_second
 * (frames allocated, 2^order per item) and meta_bytes_per_GiB: frame-table plus heap
 * metadata per GiB of machine memory.
 *
 * The baseline's pop and push are out-of-line functions, as the heap's entry points are
 * calls into the library, and so the compiler cannot fold a pop and the push that follows
 * into nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <memvirt/memvirt.h>

#include "bench.h"

#if defined(__GNUC__)
#define MVB_NOINLINE __attribute__((noinline))
#else
#define MVB_NOINLINE
#endif

#define MM_MEM_BYTES (UINT64_C(1) << 30)
#define MM_FRAMES (MM_MEM_BYTES >> MV_PAGE_SHIFT)
#define MM_TOPOLOGY "pack:1 numa:1 core:2 pu:1"

/* Skip the run with the name of the call that failed and its error. */
static void fail(mvb_state_t *st, const char *what, int rc)
{
    char msg[128];
    snprintf(msg, sizeof msg, "%s: %s", what, mv_strerror_name(rc));
    mvb_skip_with_error(st, msg);
}

/* ---- mm/alloc_free_order* ------------------------------------------------------------ */

struct mm_bench {
    const char *name;
    unsigned order;
    mv_host_t *host; /* of the current run */
};

static int mm_setup(void *user, int threads)
{
    struct mm_bench *b = user;
    /* The one-node topology keeps runs comparable; MEMVIRT_TOPOLOGY overrides it. */
    struct mv_host_config cfg = {
        .size = sizeof cfg,
        .mem_bytes = MM_MEM_BYTES,
        .topology = getenv("MEMVIRT_TOPOLOGY") ? NULL : MM_TOPOLOGY,
    };

    (void)threads;
    b->host = NULL;
    return mv_host_create(&cfg, &b->host);
}

static void mm_teardown(void *user, int threads)
{
    struct mm_bench *b = user;
    /* Static: big, and teardown runs on one thread at a time. */
    static struct mv_audit_report audit;
    struct mv_host_stats hs = {.size = sizeof hs};
    char msg[200];
    int rc;

    (void)threads;
    audit.size = sizeof audit;
    if (!b->host)
        return;
    rc = mv_host_drain(b->host);
    if (rc == 0)
        rc = mv_host_stats(b->host, &hs);
    if (rc != 0) {
        snprintf(msg, sizeof msg, "drain/stats: %s", mv_strerror_name(rc));
        mvb_report_failure(b->name, msg);
    } else if (hs.free_frames != hs.total_frames) {
        snprintf(msg, sizeof msg, "%llu of %llu frames not freed",
                 (unsigned long long)(hs.total_frames - hs.free_frames),
                 (unsigned long long)hs.total_frames);
        mvb_report_failure(b->name, msg);
    }
    rc = mv_host_audit(b->host, &audit);
    if (rc == MV_EUCLEAN && audit.nr_violations > 0) {
        const struct mv_audit_violation *v = &audit.v[0];
        snprintf(msg, sizeof msg, "audit: %llu violation(s), first %s %s mfn %#llx (%llu, %llu)",
                 (unsigned long long)audit.nr_violations, v->invariant, v->what,
                 (unsigned long long)v->mfn, (unsigned long long)v->detail[0],
                 (unsigned long long)v->detail[1]);
        mvb_report_failure(b->name, msg);
    } else if (rc != 0) {
        snprintf(msg, sizeof msg, "audit: %s", mv_strerror_name(rc));
        mvb_report_failure(b->name, msg);
    }
    mv_host_destroy(b->host);
    b->host = NULL;
}

/* Frame-table and heap metadata per GiB of machine memory. */
static void mm_report_meta(mvb_state_t *st, mv_host_t *h)
{
    struct mv_host_stats hs = {.size = sizeof hs};
    int rc = mv_host_stats(h, &hs);

    if (rc != 0) {
        fail(st, "mv_host_stats", rc);
        return;
    }
    double gib = (double)hs.total_frames * MV_PAGE_SIZE / (double)(UINT64_C(1) << 30);
    double meta = (double)(hs.frametable_bytes + hs.heap_meta_bytes);
    mvb_counter(st, "meta_bytes_per_GiB", gib > 0 ? meta / gib : 0.0, MVB_COUNTER_BINARY);
}

static void mm_run_alloc_free(mvb_state_t *st, void *user)
{
    const struct mm_bench *b = user;
    mv_host_t *h = b->host;
    const unsigned order = b->order;
    uint64_t n;

    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++) {
            mv_mfn_t mfn;
            int rc = mv_frame_alloc(h, order, MV_NODE_ANY, 0, &mfn);
            if (rc != 0) {
                fail(st, "mv_frame_alloc", rc);
                break;
            }
            rc = mv_frame_free(h, mfn, order);
            if (rc != 0) {
                fail(st, "mv_frame_free", rc);
                break;
            }
        }
    }
    if (mvb_error_occurred(st))
        return;
    mvb_set_items_processed(st, mvb_iterations(st));
    mvb_counter(st, "frames_per_second", (double)(mvb_iterations(st) << order), MVB_COUNTER_RATE);
    /* A plain counter is summed across threads: one thread reports it. */
    if (mvb_thread_index(st) == 0)
        mm_report_meta(st, h);
}

static struct mm_bench mm_order0 = {.name = "mm/alloc_free_order0", .order = 0};
static struct mm_bench mm_order9 = {.name = "mm/alloc_free_order9", .order = 9};

/* ---- baseline/freelist_stack ----------------------------------------------------------- */

#define FL_NIL UINT64_MAX
#define FL_FREE 0u
#define FL_ALLOCATED 1u

/* A frame descriptor of the size of the engine's (32 bytes); `next` links free frames. */
struct fl_desc {
    uint64_t next;   /* index of the next free frame, or FL_NIL */
    uint64_t owner;
    uint32_t count;
    uint32_t type;
    uint32_t order;
    uint32_t state;  /* FL_FREE or FL_ALLOCATED */
};
_Static_assert(sizeof(struct fl_desc) == 32, "a frame descriptor is 32 bytes");

/* One thread's stack, alone on its cache lines. */
struct fl_stack {
    _Alignas(64) uint64_t head;
    uint64_t nr_free;
    struct fl_desc *desc;
};

struct fl_bench {
    struct fl_stack *stacks; /* one per thread of the current run */
    int nr_stacks;
};

static MVB_NOINLINE struct fl_desc *fl_pop(struct fl_stack *s)
{
    uint64_t top = s->head;

    if (top == FL_NIL)
        return NULL;
    struct fl_desc *d = &s->desc[top];
    s->head = d->next;
    s->nr_free--;
    d->next = FL_NIL;
    d->state = FL_ALLOCATED;
    return d;
}

/* Refuses a frame that is not allocated (a double free), as an allocator would. */
static MVB_NOINLINE int fl_push(struct fl_stack *s, struct fl_desc *d)
{
    if (d->state != FL_ALLOCATED)
        return -1;
    d->state = FL_FREE;
    d->next = s->head;
    s->head = (uint64_t)(d - s->desc);
    s->nr_free++;
    return 0;
}

/* A failure leaves what was built to fl_teardown, which runs after every setup. */
static int fl_setup(void *user, int threads)
{
    struct fl_bench *b = user;

    b->stacks = aligned_alloc(_Alignof(struct fl_stack),
                              (size_t)threads * sizeof *b->stacks);
    if (!b->stacks)
        return -1;
    memset(b->stacks, 0, (size_t)threads * sizeof *b->stacks);
    b->nr_stacks = threads;
    for (int t = 0; t < threads; t++) {
        struct fl_stack *s = &b->stacks[t];
        s->head = FL_NIL;
        s->desc = calloc(MM_FRAMES, sizeof *s->desc);
        if (!s->desc)
            return -1;
        /* Frame 0 ends on top, as a fresh heap hands out its lowest frame first. */
        for (uint64_t f = MM_FRAMES; f-- > 0;) {
            s->desc[f].state = FL_ALLOCATED;
            fl_push(s, &s->desc[f]);
        }
    }
    return 0;
}

static void fl_teardown(void *user, int threads)
{
    struct fl_bench *b = user;

    (void)threads;
    if (!b->stacks)
        return;
    for (int t = 0; t < b->nr_stacks; t++) {
        struct fl_stack *s = &b->stacks[t];
        if (s->desc && s->nr_free != MM_FRAMES)
            mvb_report_failure("baseline/freelist_stack", "a frame was not pushed back");
        free(s->desc);
    }
    free(b->stacks);
    b->stacks = NULL;
    b->nr_stacks = 0;
}

static void fl_run(mvb_state_t *st, void *user)
{
    struct fl_bench *b = user;
    struct fl_stack *s = &b->stacks[mvb_thread_index(st)];
    uint64_t n;

    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++) {
            struct fl_desc *d = fl_pop(s);
            if (!d) {
                mvb_skip_with_error(st, "fl_pop: empty");
                break;
            }
            if (fl_push(s, d) != 0) {
                mvb_skip_with_error(st, "fl_push: not allocated");
                break;
            }
        }
    }
    if (!mvb_error_occurred(st))
        mvb_set_items_processed(st, mvb_iterations(st));
}

static struct fl_bench fl_bench;

/* ---- Registration ------------------------------------------------------------------------ */

static void must_register(const struct mvb_bench *b)
{
    if (mvb_register(b) != 0) {
        fprintf(stderr, "memvirt-bench: cannot register %s\n", b->name);
        exit(1);
    }
}

void mvb_register_mm(void)
{
    struct mm_bench *mm[] = {&mm_order0, &mm_order9};

    for (size_t i = 0; i < sizeof mm / sizeof mm[0]; i++) {
        must_register(&(struct mvb_bench){
            .name = mm[i]->name,
            .run = mm_run_alloc_free,
            .user = mm[i],
            .setup = mm_setup,
            .teardown = mm_teardown,
            .threads = {1, 2},
            .flags = MVB_REAL_TIME,
        });
    }
    must_register(&(struct mvb_bench){
        .name = "baseline/freelist_stack",
        .run = fl_run,
        .user = &fl_bench,
        .setup = fl_setup,
        .teardown = fl_teardown,
        .threads = {1, 2},
        .flags = MVB_REAL_TIME,
    });

    if (mvb_register_ratio("mm/alloc_free_order0", "baseline/freelist_stack", 5.0) != 0 ||
        mvb_register_ratio("mm/alloc_free_order9", "baseline/freelist_stack", 0) != 0) {
        fprintf(stderr, "memvirt-bench: cannot register the mm ratios\n");
        exit(1);
    }
}
