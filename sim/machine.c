/*
 * sim/machine.c - the simulated machine: the wrapped posix platform, its TLB-flush hook,
 * and the registry of hardware vCPUs.
 *
 * The flush hook runs under engine locks and must not call into the engine: it only
 * looks up the named vCPUs in the registry and invalidates their TLBs. The registry is
 * changed only by mv_sim_attach/detach, while no vCPU thread runs.
 *
 * Threaded mode (one thread per vCPU): a TLB belongs to its vCPU's thread alone, so the
 * hook never touches one. It follows KVM's request pattern: it posts SIM_REQ_FLUSH to each
 * target vCPU (an atomic OR), then waits only for the targets that are running guest code,
 * until they have handled the request or left guest code. The vCPU side announces guest
 * code with a sequentially consistent exchange of its mode and then reads its requests;
 * the hook ORs the request and then reads the mode, so one of the two sees the other: a
 * vCPU that did not see the request is waited for, one that is outside guest code (in the
 * engine, waiting for a lock of the guest model, or idle) handles the request before it
 * next runs guest code. A vCPU in guest code never blocks (it leaves guest code before
 * every engine call), so the wait always ends, whatever locks its caller holds.
 *
 * A handled request drops every TLB entry (more than asked is always allowed): the bits are
 * read, the TLB flushed, then the bits cleared; between the read and the clear no entry is
 * filled, so a requester that sees its bit cleared knows the flush happened after it
 * posted, or before with nothing filled since.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sim-internal.h"

static struct mv_sim *sim_of(const struct mv_platform *p)
{
    return (struct mv_sim *)(void *)p; /* p is the first member */
}

static void flush_vcpu(struct mv_sim_vcpu *sv, const struct mv_flush_request *req)
{
    switch (req->scope) {
    case MV_FLUSH_LINEAR_ONE:
        sv->st.flushes_one++;
        mv__sim_tlb_flush_one(sv, req->linear);
        break;
    case MV_FLUSH_LINEAR_ALL:
        sv->st.flushes_linear++;
        mv__sim_tlb_flush_all(sv, false);
        break;
    case MV_FLUSH_GUEST_PHYS:
        /* The TLB holds combined translations: every one derives from the p2m (through
         * the EPT or the shadows). PV vCPUs never walk the p2m, so they keep theirs. */
        sv->st.flushes_gphys++;
        if (sv->hvm)
            mv__sim_tlb_flush_all(sv, false);
        break;
    default:
        sv->st.flushes_linear++;
        mv__sim_tlb_flush_all(sv, false);
        break;
    }
}

/* ---- Threaded mode: requests and guest-code brackets ------------------------------------- */

static void handle_requests(struct mv_sim_vcpu *sv)
{
    uint32_t r = atomic_load_explicit(&sv->req, memory_order_acquire);
    if (!r)
        return;
    if ((r & SIM_REQ_GUEST_FLUSH) && sv->shadow) {
        /* The guest's flush on this vCPU is a trap under shadow paging: the engine
         * resyncs, then the TLB goes. The bit is cleared first: the sender stops
         * waiting once this vCPU has left guest code for the engine, and the vCPU
         * runs no guest code before the flush is done. Requests posted meanwhile are
         * handled when the engine call ends. */
        atomic_fetch_and_explicit(&sv->req, ~SIM_REQ_GUEST_FLUSH, memory_order_acq_rel);
        mv_sim_flush_tlb(sv);
        return;
    }
    if (r & (SIM_REQ_FLUSH | SIM_REQ_GUEST_FLUSH)) {
        sv->st.flushes_linear++;
        mv__sim_tlb_flush_all(sv, false);
    }
    atomic_fetch_and_explicit(&sv->req, ~r, memory_order_acq_rel);
}

void mv__sim_guest_enter(struct mv_sim_vcpu *sv)
{
    if (!sv->s->threaded || sv->depth++)
        return;
    atomic_exchange_explicit(&sv->mode, SIM_IN_GUEST, memory_order_seq_cst);
    handle_requests(sv);
}

void mv__sim_guest_exit(struct mv_sim_vcpu *sv)
{
    if (!sv->s->threaded || --sv->depth)
        return;
    atomic_store_explicit(&sv->mode, SIM_OUTSIDE, memory_order_release);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void mv__sim_engine_begin(struct mv_sim_vcpu *sv)
{
    sv->engine_t0 = now_ns();
    if (sv->s->threaded && sv->depth)
        atomic_store_explicit(&sv->mode, SIM_OUTSIDE, memory_order_release);
}

void mv__sim_engine_end(struct mv_sim_vcpu *sv)
{
    sv->st.engine_ns += now_ns() - sv->engine_t0;
    if (!sv->s->threaded)
        return;
    if (sv->depth)
        atomic_exchange_explicit(&sv->mode, SIM_IN_GUEST, memory_order_seq_cst);
    handle_requests(sv);
}

void mv__sim_poll(struct mv_sim_vcpu *sv)
{
    if (sv->s->threaded)
        handle_requests(sv);
}

/* Post a request; wait while the target runs guest code and has not handled it. */
static void post(struct mv_sim_vcpu *sv, uint32_t bit)
{
    atomic_fetch_or_explicit(&sv->req, bit, memory_order_seq_cst);
    bool waited = false;
    while (atomic_load_explicit(&sv->mode, memory_order_seq_cst) == SIM_IN_GUEST &&
           (atomic_load_explicit(&sv->req, memory_order_acquire) & bit)) {
        waited = true;
        sched_yield();
    }
    if (waited)
        atomic_fetch_add_explicit(&sv->s->flush_waits, 1, memory_order_relaxed);
}

uint64_t mv_sim_flush_waits(const mv_sim_t *s)
{
    return atomic_load_explicit(&s->flush_waits, memory_order_relaxed);
}

void mv_sim_vcpu_kick_flush(mv_sim_vcpu_t *sv)
{
    if (sv->s->threaded)
        post(sv, SIM_REQ_GUEST_FLUSH);
    else
        mv_sim_flush_tlb(sv);
}

void mv_sim_set_threaded(mv_sim_t *s, bool on)
{
    s->threaded = on;
}

bool mv_sim_threaded(const mv_sim_t *s)
{
    return s->threaded;
}

static void sim_tlb_flush(const struct mv_platform *p, const struct mv_flush_request *req)
{
    struct mv_sim *s = sim_of(p);
    atomic_fetch_add_explicit(&s->flush_requests, 1, memory_order_relaxed);
    if (s->drop_flushes)
        return;
    for (uint32_t i = 0; i < s->nr_doms; i++) {
        struct sim_dom *sd = &s->doms[i];
        if (req->domid != MV_DOMID_ALL && req->domid != sd->domid)
            continue;
        for (uint32_t k = 0; k < sd->nr; k++) {
            bool named = req->domid == MV_DOMID_ALL ||
                         (k < req->nr_vcpus && ((req->vcpu_mask[k / 64] >> (k % 64)) & 1));
            if (!named || !sd->v[k])
                continue;
            if (s->threaded)
                post(sd->v[k], SIM_REQ_FLUSH);
            else
                flush_vcpu(sd->v[k], req);
        }
    }
}

int mv_sim_create(const struct mv_sim_config *cfg, mv_sim_t **out)
{
    if (!cfg || !out || cfg->size < sizeof(*cfg) || cfg->mem_bytes < (2u << 20))
        return MV_EINVAL;
    *out = NULL;
    struct mv_posix_config pc = {.size = sizeof(pc), .mem_bytes = cfg->mem_bytes,
                                 .topology = cfg->topology ? cfg->topology
                                                           : "pack:1 numa:1 core:1 pu:1"};
    struct mv_platform *posix = NULL;
    int rc = mv_posix_platform_create(&pc, &posix);
    if (rc)
        return rc;
    struct mv_sim *s = calloc(1, sizeof(*s));
    if (!s) {
        mv_posix_platform_destroy(posix);
        return MV_ENOMEM;
    }
    s->p = *posix;
    s->posix = posix;
    s->p.tlb_flush = sim_tlb_flush;
    struct mv_host_config hc = {.size = sizeof(hc), .mem_bytes = cfg->mem_bytes,
                                .platform = &s->p};
    rc = mv_host_create(&hc, &s->h);
    if (rc) {
        mv_posix_platform_destroy(posix);
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void mv_sim_destroy(mv_sim_t *s)
{
    if (!s)
        return;
    while (s->nr_doms)
        mv_sim_detach(s, s->doms[0].d);
    free(s->doms);
    mv_host_destroy(s->h);
    mv_posix_platform_destroy(s->posix);
    free(s);
}

mv_host_t *mv_sim_host(const mv_sim_t *s)
{
    return s ? s->h : NULL;
}

void mv_sim_drop_flushes(mv_sim_t *s, bool on)
{
    s->drop_flushes = on;
}

uint64_t mv_sim_flush_requests(const mv_sim_t *s)
{
    return atomic_load_explicit(&s->flush_requests, memory_order_relaxed);
}

static struct sim_dom *find_dom(mv_sim_t *s, const mv_domain_t *d)
{
    for (uint32_t i = 0; i < s->nr_doms; i++)
        if (s->doms[i].d == d)
            return &s->doms[i];
    return NULL;
}

int mv_sim_attach(mv_sim_t *s, mv_domain_t *d)
{
    if (!s || !d)
        return MV_EINVAL;
    if (find_dom(s, d))
        return MV_EEXIST;
    struct mv_domain_stats ds = {.size = sizeof(ds)};
    int rc = mv_domain_stats(d, &ds);
    if (rc)
        return rc;
    if (s->nr_doms == s->cap_doms) {
        uint32_t cap = s->cap_doms ? 2 * s->cap_doms : 8;
        struct sim_dom *nd = realloc(s->doms, cap * sizeof(*nd));
        if (!nd)
            return MV_ENOMEM;
        s->doms = nd;
        s->cap_doms = cap;
    }
    struct sim_dom sd = {.d = d, .domid = ds.domid, .nr = ds.nr_vcpus};
    sd.v = calloc(ds.nr_vcpus, sizeof(*sd.v));
    if (!sd.v)
        return MV_ENOMEM;
    for (uint32_t i = 0; i < ds.nr_vcpus; i++) {
        struct mv_sim_vcpu *sv = calloc(1, sizeof(*sv));
        if (!sv) {
            while (i--)
                free(sd.v[i]);
            free(sd.v);
            return MV_ENOMEM;
        }
        sv->s = s;
        sv->v = mv_domain_vcpu(d, i);
        sv->d = d;
        sv->h = s->h;
        sv->domid = ds.domid;
        sv->idx = i;
        sv->hap = ds.paging == MV_PAGING_HAP;
        sv->shadow = ds.paging == MV_PAGING_SHADOW;
        sv->hvm = sv->hap || sv->shadow;
        sv->root_override = MV_INVALID_MFN;
        sv->seen_root = UINT64_MAX;
        sd.v[i] = sv;
    }
    s->doms[s->nr_doms++] = sd;
    return 0;
}

int mv_sim_detach(mv_sim_t *s, mv_domain_t *d)
{
    struct sim_dom *sd = s ? find_dom(s, d) : NULL;
    if (!sd)
        return MV_ENOENT;
    for (uint32_t i = 0; i < sd->nr; i++)
        free(sd->v[i]);
    free(sd->v);
    *sd = s->doms[--s->nr_doms];
    return 0;
}

mv_sim_vcpu_t *mv_sim_vcpu(mv_sim_t *s, mv_domain_t *d, uint32_t idx)
{
    struct sim_dom *sd = s ? find_dom(s, d) : NULL;
    return sd && idx < sd->nr ? sd->v[idx] : NULL;
}

mv_vcpu_t *mv_sim_vcpu_engine(const mv_sim_vcpu_t *sv)
{
    return sv->v;
}

void mv_sim_vcpu_stats(const mv_sim_vcpu_t *sv, struct mv_sim_vcpu_stats *st)
{
    *st = sv->st;
}

/* ---- TLB ---------------------------------------------------------------------------------- */

static unsigned size_shift(unsigned size)
{
    return 12 + 9 * size;
}

uint64_t mv__sim_tlbe_va(unsigned size, const struct sim_tlbe *e)
{
    return mv__sim_canon(e->tag << size_shift(size));
}

static struct sim_tlbe *set_of(struct mv_sim_vcpu *sv, uint64_t va, unsigned size,
                               uint64_t *tag)
{
    *tag = (va & 0x0000ffffffffffffull) >> size_shift(size);
    return sv->tlb.e[size][*tag % SIM_TLB_SETS];
}

struct sim_tlbe *mv__sim_tlb_find(struct mv_sim_vcpu *sv, uint64_t va)
{
    for (unsigned size = 0; size < SIM_TLB_SIZES; size++) {
        uint64_t tag;
        struct sim_tlbe *set = set_of(sv, va, size, &tag);
        for (unsigned w = 0; w < SIM_TLB_WAYS; w++)
            if (mv__sim_tlbe_live(&sv->tlb, &set[w]) && set[w].tag == tag)
                return &set[w];
    }
    return NULL;
}

struct sim_tlbe *mv__sim_tlb_victim(struct mv_sim_vcpu *sv, uint64_t va, unsigned size)
{
    uint64_t tag;
    struct sim_tlbe *set = set_of(sv, va, size, &tag);
    for (unsigned w = 0; w < SIM_TLB_WAYS; w++)
        if (!mv__sim_tlbe_live(&sv->tlb, &set[w]))
            return &set[w];
    uint8_t *next = &sv->tlb.next[size][tag % SIM_TLB_SETS];
    struct sim_tlbe *e = &set[*next];
    *next = (uint8_t)((*next + 1) % SIM_TLB_WAYS);
    return e;
}

void mv__sim_tlb_flush_one(struct mv_sim_vcpu *sv, uint64_t va)
{
    for (unsigned size = 0; size < SIM_TLB_SIZES; size++) {
        uint64_t tag;
        struct sim_tlbe *set = set_of(sv, va, size, &tag);
        for (unsigned w = 0; w < SIM_TLB_WAYS; w++)
            if (set[w].tag == tag)
                set[w].valid = 0;
    }
}

void mv__sim_tlb_flush_all(struct mv_sim_vcpu *sv, bool keep_global)
{
    struct sim_tlb *t = &sv->tlb;
    bool wrapped = keep_global ? ++t->ngen == 0 : ++t->gen == 0;
    if (!wrapped)
        return;
    /* Once in 2^32 flushes a number comes back: entries that carried it must not live
     * again, so this one flush clears them as it is asked. */
    struct sim_tlbe *e = &t->e[0][0][0];
    for (size_t i = 0; i < SIM_TLB_SIZES * SIM_TLB_SETS * SIM_TLB_WAYS; i++)
        if (!keep_global || !(e[i].flags & TLBF_G))
            e[i].valid = 0;
}

/* Shadow paging traps the guest's invalidations: the engine drops what it must. */
void mv_sim_invlpg(mv_sim_vcpu_t *sv, uint64_t va)
{
    if (sv->shadow) {
        sv->st.exits++;
        mv__sim_engine_begin(sv);
        (void)mv_shadow_invlpg(sv->v, va); /* refused only for a dying domain */
        mv__sim_engine_end(sv);
    }
    mv__sim_tlb_flush_one(sv, va);
}

void mv_sim_flush_tlb(mv_sim_vcpu_t *sv)
{
    if (sv->shadow) {
        sv->st.exits++;
        mv__sim_engine_begin(sv);
        (void)mv_shadow_flush(sv->v);
        mv__sim_engine_end(sv);
    }
    mv__sim_tlb_flush_all(sv, false);
}

void mv_sim_set_root_override(mv_sim_vcpu_t *sv, mv_mfn_t l4)
{
    sv->root_override = l4;
    mv__sim_tlb_flush_all(sv, false);
    sv->seen_root = UINT64_MAX;
}

int mv_sim_set_cr3(mv_sim_vcpu_t *sv, uint64_t cr3)
{
    struct mv_vcpu_state st = {.size = sizeof(st)};
    int rc = mv_vcpu_get_state(sv->v, &st);
    if (rc)
        return rc;
    st.cr3 = cr3;
    if ((rc = mv_vcpu_set_state(sv->v, &st)))
        return rc;
    if (sv->shadow) {
        mv_paddr_t root = 0;
        sv->st.exits++;
        mv__sim_engine_begin(sv);
        rc = mv_shadow_set_cr3(sv->v, cr3, &root);
        mv__sim_engine_end(sv);
        sv->sh_loaded = rc == 0;
        sv->sh_cr3 = cr3;
        sv->sh_root = root;
        if (rc)
            return rc;
    }
    mv__sim_tlb_flush_all(sv, (st.cr4 & MV_CR4_PGE) != 0);
    sv->seen_root = sv->hvm ? cr3 & X86_ADDR : sv->v->guest_table << MV_PAGE_SHIFT;
    return 0;
}
