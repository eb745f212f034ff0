/*
 * sim/workload.c - named workloads over the guest OS model: several domains, several vCPUs
 * each, interleaved deterministically on one thread, or (threaded mode) one thread per vCPU.
 *
 * Each domain has its own generator (seed and domain id); step k belongs to domain
 * k % domains and to its vCPU (k / domains) % vcpus, so a run is the same for a seed
 * whatever else happens on the host. A step is one guest action of the process the vCPU
 * runs: a context switch, a fork (whose child execs and exits soon), an mmap or munmap, an
 * mprotect, or an access inside the working set (a write with the dirty rate, else a read
 * that checks the content). Guest SIGSEGVs are part of the workload; when the guest runs
 * out of memory the current process is killed.
 *
 * Threaded mode: each vCPU thread draws from a generator of its own and runs its share of
 * the steps; the order in which threads meet is the host's, so nothing is deterministic.
 * A domain's bookkeeping (mapped pages, children's time to live) is guarded by the
 * domain's mutex, held for a step's decisions and guest calls except the user accesses
 * and shootdowns, which run without it so that the domain's vCPUs run guest code side by
 * side (lock order: the domain's mutex, then the guest model's). What another vCPU runs
 * is out of reach (MV_EBUSY from the guest): the step does nothing.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "sim-internal.h"

struct preset {
    const char *name;
    struct mv_sim_workload_params p;
};

/* footprint ws dirty fork mmap mprot switch file zero pool procs */
static const struct preset presets[] = {
    {"idle", {128, 10, 5, 0, 5, 0, 300, 20, 60, 30, 2}},
    {"forky", {256, 50, 30, 120, 40, 10, 100, 30, 30, 40, 6}},
    {"mmap-churn", {512, 40, 30, 5, 250, 60, 50, 30, 50, 20, 3}},
    {"compile-like", {384, 60, 40, 40, 80, 10, 80, 40, 30, 50, 6}},
    {"memory-hog", {2048, 90, 70, 0, 10, 0, 20, 5, 10, 5, 2}},
};
#define NR_PRESETS (sizeof(presets) / sizeof(presets[0]))

int mv_sim_workload_preset(const char *name, struct mv_sim_workload_params *p)
{
    for (unsigned i = 0; name && i < NR_PRESETS; i++)
        if (!strcmp(presets[i].name, name)) {
            *p = presets[i].p;
            return 0;
        }
    return MV_ENOENT;
}

const char *mv_sim_workload_name(unsigned i)
{
    return i < NR_PRESETS ? presets[i].name : NULL;
}

struct dom {
    pthread_mutex_t mu;
    mv_sim_guest_t *g;
    uint64_t rng;
    uint64_t oom;
    uint64_t *mapped; /* pages mapped per pid */
    int *ttl;         /* steps a forked child has left (-1: none) */
    uint32_t cap;
};

struct mv_sim_run {
    struct mv_sim_run_config c;
    struct mv_sim_workload_params p;
    struct dom *d;
    uint32_t nmu; /* domains whose mutex is initialised */
    uint64_t step;
};

static uint64_t rnd(uint64_t *rng)
{
    uint64_t z = (*rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t below(uint64_t *rng, uint64_t n)
{
    return n ? rnd(rng) % n : 0;
}

/* What a step asks of its caller beyond its return code (0 or an error). */
enum { STEP_ACCESS = 1, STEP_SHOOTDOWN = 2 };

static int track(struct dom *d, int pid)
{
    if ((uint32_t)pid < d->cap)
        return 0;
    uint32_t cap = (uint32_t)pid + 16;
    uint64_t *m = realloc(d->mapped, cap * sizeof(*m));
    if (!m)
        return MV_ENOMEM;
    d->mapped = m;
    int *t = realloc(d->ttl, cap * sizeof(*t));
    if (!t)
        return MV_ENOMEM;
    d->ttl = t;
    for (uint32_t i = d->cap; i < cap; i++) {
        d->mapped[i] = 0;
        d->ttl[i] = -1;
    }
    d->cap = cap;
    return 0;
}

static uint32_t live(const struct dom *d, int *pids, uint32_t max)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < d->cap && n < max; i++)
        if (mv_sim_guest_alive(d->g, (int)i))
            pids[n++] = (int)i;
    return n;
}

static int do_exit(struct dom *d, uint32_t vc, int pid)
{
    d->mapped[pid] = 0;
    d->ttl[pid] = -1;
    return mv_sim_guest_exit(d->g, vc, pid);
}

static int do_mmap(struct mv_sim_run *r, struct dom *d, uint64_t *rng, uint32_t vc, int pid)
{
    uint64_t per = r->p.footprint / 4 ? r->p.footprint / 4 : 1;
    uint64_t pages = 1 + below(rng, per);
    uint64_t va, mva, mpages;
    uint32_t prot;
    if (d->mapped[pid] + pages > r->p.footprint) {
        uint32_t n = 0;
        while (!mv_sim_guest_mapping(d->g, vc, n, &mva, &mpages, &prot))
            n++;
        if (!n || mv_sim_guest_mapping(d->g, vc, (uint32_t)below(rng, n), &mva, &mpages, &prot))
            return 0;
        d->mapped[pid] -= mpages;
        return mv_sim_guest_munmap(d->g, vc, mva);
    }
    bool file = below(rng, 100) < r->p.file_pct;
    uint32_t fprot = MV_SIM_PROT_R | (below(rng, 2) ? MV_SIM_PROT_X : MV_SIM_PROT_W);
    int rc = mv_sim_guest_mmap(d->g, vc, pages, file ? fprot : MV_SIM_PROT_R | MV_SIM_PROT_W,
                               file ? 1 + below(rng, 16) : 0, &va);
    if (!rc)
        d->mapped[pid] += pages;
    return rc;
}

static int access(struct mv_sim_run *r, struct dom *d, uint64_t *rng, uint32_t vc)
{
    uint64_t va, pages;
    uint32_t prot, n = 0;
    while (!mv_sim_guest_mapping(d->g, vc, n, &va, &pages, &prot))
        n++;
    if (!n)
        return 0;
    mv_sim_guest_mapping(d->g, vc, (uint32_t)below(rng, n), &va, &pages, &prot);
    uint64_t ws = pages * r->p.working_set / 100;
    va += below(rng, ws ? ws : 1) * MV_PAGE_SIZE;
    if (below(rng, 100) < r->p.dirty)
        return mv_sim_guest_write(d->g, vc, va);
    return below(rng, 4) ? mv_sim_guest_read(d->g, vc, va) : mv_sim_guest_touch(d->g, vc, va);
}

static int step(struct mv_sim_run *r, struct dom *d, uint64_t *rng, uint32_t vc)
{
    int pids[64];
    uint32_t np = live(d, pids, 64);
    int cur = mv_sim_guest_current(d->g, vc), rc;
    uint64_t act = below(rng, 1000);
    if (cur < 0 || act < r->p.switch_rate) {
        if (!np || (np < r->p.max_procs && !below(rng, 4))) {
            int pid;
            if ((rc = mv_sim_guest_spawn(d->g, vc, &pid)) || (rc = track(d, pid)))
                return rc;
            pids[np++] = pid;
        }
        return mv_sim_guest_switch(d->g, vc, pids[below(rng, np)]);
    }
    if (d->ttl[cur] >= 0 && !d->ttl[cur]--)
        return do_exit(d, vc, cur);
    act -= r->p.switch_rate;
    if (act < r->p.fork_rate) {
        if (np >= r->p.max_procs) {
            int victim = pids[below(rng, np)];
            return victim == cur ? 0 : do_exit(d, vc, victim);
        }
        int child;
        if ((rc = mv_sim_guest_fork(d->g, vc, cur, &child)) || (rc = track(d, child)))
            return rc;
        d->mapped[child] = d->mapped[cur];
        d->ttl[child] = 4 + (int)below(rng, 40);
        if (below(rng, 2)) { /* fork + exec */
            d->mapped[child] = 0;
            return mv_sim_guest_exec(d->g, vc, child);
        }
        return 0;
    }
    act -= r->p.fork_rate;
    if (act < r->p.mmap_rate)
        return do_mmap(r, d, rng, vc, cur);
    act -= r->p.mmap_rate;
    if (act < r->p.mprotect_rate) {
        uint64_t va, pages;
        uint32_t prot;
        if (mv_sim_guest_mapping(d->g, vc, 0, &va, &pages, &prot))
            return 0;
        return mv_sim_guest_mprotect(d->g, vc, va, prot ^ MV_SIM_PROT_W);
    }
    return act % 64 == 0 ? STEP_SHOOTDOWN : STEP_ACCESS;
}

/* One step of vCPU vc of d, the domain's mutex held for all but guest code. */
static int step_one(struct mv_sim_run *r, struct dom *d, uint64_t *rng, uint32_t vc)
{
    pthread_mutex_lock(&d->mu);
    int rc = step(r, d, rng, vc);
    pthread_mutex_unlock(&d->mu);
    if (rc == STEP_SHOOTDOWN)
        rc = mv_sim_guest_shootdown(d->g, vc);
    else if (rc == STEP_ACCESS)
        rc = access(r, d, rng, vc);
    if (rc == MV_EFAULT || rc == MV_EBUSY)
        return 0; /* SIGSEGV: the guest's business; EBUSY: another vCPU runs it */
    if (rc == MV_ENOMEM) {
        /* Out of guest memory: kill the process running here. */
        pthread_mutex_lock(&d->mu);
        int cur = mv_sim_guest_current(d->g, vc);
        d->oom++;
        rc = cur >= 0 ? do_exit(d, vc, cur) : 0;
        pthread_mutex_unlock(&d->mu);
    }
    return rc;
}

struct vthread {
    struct mv_sim_run *r;
    struct dom *d;
    uint32_t vc;
    uint64_t rng, steps;
    int rc;
    _Atomic int *stop;
};

static void *vthread_main(void *arg)
{
    struct vthread *t = arg;
    for (uint64_t k = 0; k < t->steps; k++) {
        if (atomic_load_explicit(t->stop, memory_order_relaxed))
            break;
        if ((t->rc = step_one(t->r, t->d, &t->rng, t->vc))) {
            atomic_store_explicit(t->stop, 1, memory_order_relaxed);
            break;
        }
    }
    return NULL;
}

/* Threaded: n steps shared out among one thread per vCPU; the first error stops all. */
static int run_threads(struct mv_sim_run *r, uint64_t n)
{
    uint32_t nt = r->c.domains * r->c.vcpus;
    struct vthread *t = calloc(nt, sizeof(*t));
    pthread_t *tid = calloc(nt, sizeof(*tid));
    _Atomic int stop = 0;
    int rc = t && tid ? 0 : MV_ENOMEM;
    uint32_t started = 0;
    for (uint32_t i = 0; i < nt && !rc; i++) {
        t[i] = (struct vthread){.r = r, .d = &r->d[i % r->c.domains],
                                .vc = i / r->c.domains, .stop = &stop,
                                .steps = n / nt + (i < n % nt),
                                .rng = r->c.seed * 0x100000001b3ull + 0x5851f42d4c957f2dull * (i + 1)
                                       + r->step};
        if (pthread_create(&tid[i], NULL, vthread_main, &t[i]))
            rc = MV_ENOMEM;
        else
            started++;
    }
    for (uint32_t i = 0; i < started; i++) {
        pthread_join(tid[i], NULL);
        if (!rc && t[i].rc)
            rc = t[i].rc;
    }
    r->step += n;
    free(t);
    free(tid);
    return rc;
}

int mv_sim_run_steps(mv_sim_run_t *r, uint64_t n)
{
    if (r->c.threaded)
        return run_threads(r, n);
    for (uint64_t k = 0; k < n; k++, r->step++) {
        struct dom *d = &r->d[r->step % r->c.domains];
        uint32_t vc = (uint32_t)((r->step / r->c.domains) % r->c.vcpus);
        int rc = step_one(r, d, &d->rng, vc);
        if (rc)
            return rc;
    }
    return 0;
}

int mv_sim_run_create(mv_sim_t *s, const struct mv_sim_run_config *cfg, mv_sim_run_t **out)
{
    if (!s || !cfg || !out || cfg->size < sizeof(*cfg) || !cfg->domains ||
        cfg->domains > 64 || !cfg->vcpus || cfg->vcpus > 64)
        return MV_EINVAL;
    struct mv_sim_run *r = calloc(1, sizeof(*r));
    if (!r)
        return MV_ENOMEM;
    r->c = *cfg;
    int rc = mv_sim_workload_preset(cfg->workload, &r->p);
    if (!rc && !(r->d = calloc(cfg->domains, sizeof(*r->d))))
        rc = MV_ENOMEM;
    uint64_t mem = cfg->mem_pages;
    if (!mem) /* room for every process at its footprint, and tables */
        mem = (r->p.footprint * (r->p.max_procs + 1) + 1023) & ~511ull;
    for (uint32_t i = 0; i < cfg->domains && !rc; i++) {
        struct mv_sim_guest_config gc = {.size = sizeof(gc), .domid = i + 1,
                                         .nr_vcpus = cfg->vcpus, .hvm = cfg->hvm, .hap = cfg->hap,
                                         .mem_pages = mem, .seed = cfg->seed,
                                         .zero_pct = r->p.zero_pct, .pool_pct = r->p.pool_pct,
                                         .check = cfg->check, .threaded = cfg->threaded,
                                         .shadow_pool_pages = cfg->shadow_pool_pages,
                                         .shadow_sync = cfg->shadow_sync};
        r->d[i].rng = cfg->seed * 0x100000001b3ull + i + 1;
        pthread_mutex_init(&r->d[i].mu, NULL);
        r->d[i].cap = 0;
        r->nmu = i + 1;
        rc = mv_sim_guest_create(s, &gc, &r->d[i].g);
    }
    if (rc) {
        mv_sim_run_destroy(r);
        return rc;
    }
    if (cfg->threaded)
        mv_sim_set_threaded(s, true);
    *out = r;
    return 0;
}

mv_sim_guest_t *mv_sim_run_guest(const mv_sim_run_t *r, uint32_t i)
{
    return i < r->c.domains ? r->d[i].g : NULL;
}

uint64_t mv_sim_run_oom(const mv_sim_run_t *r, uint32_t i)
{
    return i < r->c.domains ? r->d[i].oom : 0;
}

void mv_sim_run_destroy(mv_sim_run_t *r)
{
    if (!r)
        return;
    for (uint32_t i = 0; r->d && i < r->c.domains; i++) {
        if (i < r->nmu)
            pthread_mutex_destroy(&r->d[i].mu);
        mv_sim_guest_destroy(r->d[i].g);
        free(r->d[i].mapped);
        free(r->d[i].ttl);
    }
    free(r->d);
    free(r);
}
