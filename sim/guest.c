/*
 * sim/guest.c - the guest OS model: a kernel's page allocator, processes, VMAs, and real
 * x86-64 page tables in guest memory, edited the way PV and HVM kernels edit them.
 *
 * Layout. gfn 0 is never used. PV: gfn 1 is the idle kernel L4 (pinned at boot). HVM: gfn 1
 * the idle L4, gfn 2 the direct map's L3, then its L2s (2 MiB global leaves over all RAM);
 * the boot loader writes these with paging off (mv_guest_phys_write), everything after goes
 * through a vCPU. User space is L4 slots 0..255; HVM process L4s share slot 273 (the direct
 * map) with the idle L4.
 *
 * Kernel accesses. HVM: through the acting vCPU at MV_SIM_DIRECT_MAP + gpa, supervisor.
 * PV: page-table entries through mv_pv_mmu_update (batched; a read flushes the batch first);
 * data pages (fill, copy-on-write copies) through mv_guest_phys_read/write, which stands for
 * the PV kernel's own mapping of its RAM (not modelled). A frame is written that way only
 * while it has no page-table type.
 *
 * The gather: clearing or downgrading PTEs queues the linear addresses to invalidate and
 * the frames to free; commit() flushes the PV batch, shoots down on every vCPU running the
 * process (and checks them), and only then frees the frames, so no vCPU can reach a frame
 * after it has been reused.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim-internal.h"

#define USER_BASE 0x10000000ull
#define DMAP_SLOT 273u
#define ID_ABSENT UINT64_MAX /* page never touched in this process */
#define ID_POOL (1ull << 62)
#define ID_UNIQUE (2ull << 62)
#define GATHER_MAX 32u
#define BATCH_MAX 64u
#define PTE_USER_TABLE (X86_P | X86_RW | X86_US)

struct vma {
    uint64_t start, pages;
    uint32_t prot;
    uint64_t file;
    uint64_t *ids; /* expected content per page */
};

struct proc {
    bool live;
    mv_gfn_t l4;
    uint64_t next_va;
    struct vma *v;
    uint32_t nv, cap;
};

struct mv_sim_guest {
    pthread_mutex_t lock; /* everything below but the vCPUs' TLBs and ubuf slices */
    mv_sim_t *s;
    mv_domain_t *d;
    struct mv_sim_guest_config c;
    mv_sim_vcpu_t **sv;
    int *running;
    uint32_t vc; /* the acting vCPU */
    uint64_t pages;
    mv_mfn_t *mfn;     /* gfn -> mfn (learned at boot; the p2m does not change) */
    uint16_t *ref;     /* guest page references (data pages shared by fork) */
    uint16_t *used;    /* present entries of a page table */
    mv_gfn_t *freel;
    uint64_t nfree;
    mv_gfn_t idle_l4;
    struct proc *p;
    uint32_t np;
    uint64_t rng, unique;
    struct mv_pv_mmu_update batch[BATCH_MAX];
    uint32_t nb;
    uint64_t gva[GATHER_MAX];
    uint32_t ngva;
    bool gather_all;
    mv_gfn_t *pend;
    uint64_t npend, cappend;
    int gpid; /* the process the gather is for */
    struct mv_sim_guest_stats st;
    uint64_t buf[512];
    uint64_t *ubuf;    /* a page per vCPU for user accesses (made without the lock) */
};

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rnd(mv_sim_guest_t *g)
{
    return mix(g->rng += 0x9e3779b97f4a7c15ull);
}

static void fill(uint64_t id, uint64_t *w)
{
    if (!id) {
        memset(w, 0, MV_PAGE_SIZE);
        return;
    }
    for (unsigned i = 0; i < 512; i++)
        w[i] = mix(id * 512 + i + 1);
}

static int err(mv_sim_guest_t *g, int rc)
{
    if (rc) {
        g->st.errors++;
        g->st.last_error = rc;
    }
    return rc;
}

static struct mv_sim_vcpu *acting(mv_sim_guest_t *g)
{
    return g->sv[g->vc];
}

/* ---- Kernel accesses ---------------------------------------------------------------------- */

static int batch_flush(mv_sim_guest_t *g)
{
    uint32_t off = 0;
    while (off < g->nb) {
        uint32_t done = 0;
        int rc = mv_pv_mmu_update(acting(g)->v, g->batch + off, g->nb - off, &done);
        off += done;
        if (rc == MV_EAGAIN)
            continue;
        if (rc) {
            g->nb = 0;
            return err(g, rc);
        }
    }
    g->nb = 0;
    return 0;
}

static int kcopy(mv_sim_guest_t *g, mv_gfn_t gfn, unsigned off, void *buf, size_t len, bool wr)
{
    if (g->c.hvm) {
        struct mv_sim_result r;
        uint64_t va = MV_SIM_DIRECT_MAP + (gfn << MV_PAGE_SHIFT) + off;
        if (mv_sim_rw(acting(g), va, buf, len, wr ? MV_SIM_WRITE : MV_SIM_READ, 0, &r))
            return err(g, r.kind == MV_SIM_ENGINE_ERROR ? r.rc : MV_EFAULT);
        return 0;
    }
    mv_paddr_t gpa = (gfn << MV_PAGE_SHIFT) + off;
    if (wr) {
        if (MV_DEBUG >= 2) {
            struct mv_page_info pi = {.size = sizeof(pi)};
            if (!mv_page_info(mv_sim_host(g->s), g->mfn[gfn], &pi) && pi.type_refs &&
                pi.type != MV_PGT_WRITABLE)
                return err(g, MV_EBUSY); /* would bypass validation */
        }
        return err(g, mv_guest_phys_write(g->d, gpa, buf, len));
    }
    return err(g, mv_guest_phys_read(g->d, gpa, buf, len));
}

static uint64_t frame_addr(const mv_sim_guest_t *g, mv_gfn_t gfn)
{
    return (g->c.hvm ? gfn : g->mfn[gfn]) << MV_PAGE_SHIFT;
}

static mv_gfn_t entry_gfn(const mv_sim_guest_t *g, uint64_t e)
{
    uint64_t a = (e & X86_ADDR) >> MV_PAGE_SHIFT;
    if (g->c.hvm)
        return a;
    struct mv_page_info pi = {.size = sizeof(pi)};
    if (mv_page_info(mv_sim_host(g->s), a, &pi) || pi.gfn >= g->pages)
        return 0;
    return pi.gfn;
}

static int pt_read(mv_sim_guest_t *g, mv_gfn_t t, unsigned i, uint64_t *e)
{
    int rc = g->nb ? batch_flush(g) : 0;
    return rc ? rc : kcopy(g, t, i * 8u, e, 8, false);
}

static int pt_write(mv_sim_guest_t *g, mv_gfn_t t, unsigned i, uint64_t e)
{
    if (g->c.hvm)
        return kcopy(g, t, i * 8u, &e, 8, true);
    g->batch[g->nb++] = (struct mv_pv_mmu_update){.ptr = g->mfn[t] * MV_PAGE_SIZE + i * 8u,
                                                  .val = e};
    return g->nb == BATCH_MAX ? batch_flush(g) : 0;
}

static int mmuext(mv_sim_guest_t *g, uint32_t vc, uint32_t cmd, uint64_t arg)
{
    struct mv_pv_mmuext_op op = {.cmd = cmd, .arg = arg};
    int rc;
    uint32_t done;
    while ((rc = mv_pv_mmuext_op(g->sv[vc]->v, &op, 1, &done)) == MV_EAGAIN && !done)
        ;
    return err(g, rc);
}

/* ---- Page allocator ----------------------------------------------------------------------- */

static int galloc(mv_sim_guest_t *g, mv_gfn_t *out)
{
    if (!g->nfree)
        return MV_ENOMEM;
    *out = g->freel[--g->nfree];
    g->ref[*out] = 1;
    g->used[*out] = 0;
    return 0;
}

/* Drop a reference; the frame is freed at the next commit. */
static int gput(mv_sim_guest_t *g, mv_gfn_t gfn)
{
    if (--g->ref[gfn])
        return 0;
    if (g->npend == g->cappend) {
        uint64_t cap = g->cappend ? 2 * g->cappend : 64;
        mv_gfn_t *n = realloc(g->pend, cap * sizeof(*n));
        if (!n)
            return MV_ENOMEM;
        g->pend = n;
        g->cappend = cap;
    }
    g->pend[g->npend++] = gfn;
    return 0;
}

static int table_alloc(mv_sim_guest_t *g, mv_gfn_t *out)
{
    int rc = galloc(g, out);
    if (rc)
        return rc;
    memset(g->buf, 0, sizeof(g->buf));
    if ((rc = kcopy(g, *out, 0, g->buf, MV_PAGE_SIZE, true))) {
        g->ref[*out] = 0;
        g->freel[g->nfree++] = *out;
        return rc;
    }
    g->st.page_tables++;
    return 0;
}

/* ---- The gather and the shootdown ----------------------------------------------------------- */

static void gather(mv_sim_guest_t *g, int pid, uint64_t va)
{
    g->gpid = pid;
    if (g->ngva < GATHER_MAX)
        g->gva[g->ngva++] = va;
    else
        g->gather_all = true;
}

static void check_vcpu(mv_sim_guest_t *g, struct mv_sim_vcpu *sv, uint64_t va)
{
    g->st.checks++;
    struct mv_sim_result a, o;
    if (mv_sim_verify_page(sv, va, MV_SIM_USER, &a, &o)) {
        if (getenv("MEMVIRT_SIM_DEBUG"))
            fprintf(stderr, "mismatch d%u v%u va %#llx: vcpu %s code %#x mfn %#llx / oracle %s "
                            "code %#x mfn %#llx (rc %d)\n", g->c.domid, sv->idx, (unsigned long long)va,
                    mv_sim_kind_name(a.kind), a.error_code, (unsigned long long)a.mfn,
                    mv_sim_kind_name(o.kind), o.error_code, (unsigned long long)o.mfn, a.rc);
        g->st.mismatches++;
    }
}

static int shootdown(mv_sim_guest_t *g, int pid, bool all)
{
    g->st.ops[MV_SIM_GOP_SHOOTDOWN]++;
    for (uint32_t v = 0; v < g->c.nr_vcpus; v++) {
        if (g->running[v] != pid)
            continue;
        struct mv_sim_vcpu *sv = g->sv[v];
        int rc = 0;
        if (g->c.threaded && v != g->vc) {
            /* Another thread's vCPU: the IPI. It checks itself when it next runs. */
            mv_sim_vcpu_kick_flush(sv);
            continue;
        }
        if (all) {
            if (g->c.hvm)
                mv_sim_flush_tlb(sv);
            else
                rc = mmuext(g, v, MV_PV_TLB_FLUSH_LOCAL, 0);
        }
        for (uint32_t i = 0; i < g->ngva && !all && !rc; i++) {
            if (g->c.hvm)
                mv_sim_invlpg(sv, g->gva[i]);
            else
                rc = mmuext(g, v, MV_PV_INVLPG_LOCAL, g->gva[i]);
        }
        if (rc)
            return rc;
        if (!g->c.check)
            continue;
        for (uint32_t i = 0; i < g->ngva; i++)
            check_vcpu(g, sv, g->gva[i]);
        struct mv_sim_tlb_report rep;
        memset(&rep, 0, sizeof(rep));
        if (mv_sim_tlb_check(sv, &rep))
            g->st.tlb_violations += rep.violations;
    }
    return 0;
}

static int commit(mv_sim_guest_t *g)
{
    int rc = g->nb ? batch_flush(g) : 0;
    if (!rc && (g->ngva || g->gather_all))
        rc = shootdown(g, g->gpid, g->gather_all);
    g->ngva = 0;
    g->gather_all = false;
    for (uint64_t i = 0; i < g->npend; i++)
        g->freel[g->nfree++] = g->pend[i];
    g->npend = 0;
    return rc;
}

/* ---- Page tables ---------------------------------------------------------------------------- */

static unsigned idx(uint64_t va, unsigned lvl)
{
    return (unsigned)((va >> (12 + 9 * (lvl - 1))) & 511);
}

/* The L1 table for va (allocated when asked), *path[4] the tables from L4 down. */
static int walk_to_l1(mv_sim_guest_t *g, struct proc *p, uint64_t va, bool alloc,
                      mv_gfn_t path[4])
{
    mv_gfn_t t = p->l4;
    path[3] = t;
    for (unsigned lvl = 4; lvl > 1; lvl--) {
        uint64_t e;
        int rc = pt_read(g, t, idx(va, lvl), &e);
        if (rc)
            return rc;
        mv_gfn_t n;
        if (e & X86_P) {
            n = entry_gfn(g, e);
        } else {
            if (!alloc)
                return MV_ENOENT;
            if ((rc = table_alloc(g, &n)) ||
                (rc = pt_write(g, t, idx(va, lvl), frame_addr(g, n) | PTE_USER_TABLE)))
                return rc;
            g->used[t]++;
        }
        t = n;
        path[lvl - 2] = t;
    }
    return 0;
}

/* Free the tables of path that became empty (not the L4). */
static int prune(mv_sim_guest_t *g, uint64_t va, mv_gfn_t path[4])
{
    for (unsigned lvl = 1; lvl < 4; lvl++) {
        if (g->used[path[lvl - 1]])
            return 0;
        int rc = pt_write(g, path[lvl], idx(va, lvl + 1), 0);
        if (rc)
            return rc;
        g->used[path[lvl]]--;
        g->st.page_tables--;
        if ((rc = gput(g, path[lvl - 1])))
            return rc;
    }
    return 0;
}

static uint64_t leaf_flags(uint32_t prot, bool writable)
{
    uint64_t f = X86_P | X86_US;
    if (writable && (prot & MV_SIM_PROT_W))
        f |= X86_RW;
    if (!(prot & MV_SIM_PROT_X))
        f |= X86_NX;
    return f;
}

/* ---- Processes -------------------------------------------------------------------------------- */

static struct proc *proc_of(mv_sim_guest_t *g, int pid)
{
    return pid >= 0 && (uint32_t)pid < g->np && g->p[pid].live ? &g->p[pid] : NULL;
}

static struct proc *cur(mv_sim_guest_t *g, uint32_t vc)
{
    return vc < g->c.nr_vcpus ? proc_of(g, g->running[vc]) : NULL;
}

/* Threaded: pid runs on a vCPU other than vcpu (a process runs on one vCPU at a time). */
static bool busy_elsewhere(const mv_sim_guest_t *g, uint32_t vcpu, int pid)
{
    for (uint32_t v = 0; g->c.threaded && pid >= 0 && v < g->c.nr_vcpus; v++)
        if (v != vcpu && g->running[v] == pid)
            return true;
    return false;
}

static int new_l4(mv_sim_guest_t *g, mv_gfn_t *out)
{
    int rc = table_alloc(g, out);
    if (rc)
        return rc;
    if (g->c.hvm) {
        uint64_t e = ((mv_gfn_t)2 << MV_PAGE_SHIFT) | X86_P | X86_RW; /* the direct map */
        return kcopy(g, *out, DMAP_SLOT * 8u, &e, 8, true);
    }
    return mmuext(g, g->vc, MV_PV_PIN_L4_TABLE, g->mfn[*out]);
}

static int new_proc(mv_sim_guest_t *g, int *pid)
{
    uint32_t i = 0;
    while (i < g->np && g->p[i].live)
        i++;
    if (i == g->np) {
        struct proc *n = realloc(g->p, (g->np + 1) * sizeof(*n));
        if (!n)
            return MV_ENOMEM;
        g->p = n;
        g->np++;
    }
    struct proc *p = &g->p[i];
    memset(p, 0, sizeof(*p));
    int rc = new_l4(g, &p->l4);
    if (rc)
        return rc;
    p->live = true;
    p->next_va = USER_BASE;
    g->st.processes++;
    *pid = (int)i;
    return 0;
}

static int load_root(mv_sim_guest_t *g, uint32_t vc, mv_gfn_t l4)
{
    if (g->c.hvm)
        return err(g, mv_sim_set_cr3(g->sv[vc], l4 << MV_PAGE_SHIFT));
    return mmuext(g, vc, MV_PV_NEW_BASEPTR, g->mfn[l4]);
}

static int locked_switch(mv_sim_guest_t *g, uint32_t vcpu, int pid)
{
    if (!g || vcpu >= g->c.nr_vcpus || (pid >= 0 && !proc_of(g, pid)))
        return MV_EINVAL;
    g->st.ops[MV_SIM_GOP_SWITCH]++;
    if (g->running[vcpu] == pid)
        return 0;
    if (busy_elsewhere(g, vcpu, pid))
        return MV_EBUSY;
    int rc = load_root(g, vcpu, pid < 0 ? g->idle_l4 : g->p[pid].l4);
    if (!rc)
        g->running[vcpu] = pid;
    return rc;
}

static int locked_current(const mv_sim_guest_t *g, uint32_t vcpu)
{
    return vcpu < g->c.nr_vcpus ? g->running[vcpu] : -1;
}

static bool locked_alive(const mv_sim_guest_t *g, int pid)
{
    return pid >= 0 && (uint32_t)pid < g->np && g->p[pid].live;
}

static int locked_spawn(mv_sim_guest_t *g, uint32_t vcpu, int *pid)
{
    if (!g || vcpu >= g->c.nr_vcpus || !pid)
        return MV_EINVAL;
    g->vc = vcpu;
    return new_proc(g, pid);
}

/* ---- Mappings --------------------------------------------------------------------------------- */

static struct vma *find_vma(struct proc *p, uint64_t va, uint32_t *at)
{
    for (uint32_t i = 0; i < p->nv; i++)
        if (va >= p->v[i].start && va < p->v[i].start + p->v[i].pages * MV_PAGE_SIZE) {
            if (at)
                *at = i;
            return &p->v[i];
        }
    return NULL;
}

static int add_vma(struct proc *p, const struct vma *src)
{
    if (p->nv == p->cap) {
        uint32_t cap = p->cap ? 2 * p->cap : 8;
        struct vma *n = realloc(p->v, cap * sizeof(*n));
        if (!n)
            return MV_ENOMEM;
        p->v = n;
        p->cap = cap;
    }
    struct vma *v = &p->v[p->nv];
    *v = *src;
    v->ids = malloc(v->pages * sizeof(uint64_t));
    if (!v->ids)
        return MV_ENOMEM;
    if (src->ids)
        memcpy(v->ids, src->ids, v->pages * sizeof(uint64_t));
    else
        for (uint64_t i = 0; i < v->pages; i++)
            v->ids[i] = ID_ABSENT;
    p->nv++;
    return 0;
}

static int locked_mmap(mv_sim_guest_t *g, uint32_t vcpu, uint64_t pages, uint32_t prot,
                      uint64_t file, uint64_t *va)
{
    struct proc *p = g ? cur(g, vcpu) : NULL;
    if (!p || !pages || pages > (1u << 20) || !va)
        return MV_EINVAL;
    g->st.ops[MV_SIM_GOP_MMAP]++;
    struct vma v = {.start = p->next_va, .pages = pages, .prot = prot, .file = file};
    int rc = add_vma(p, &v);
    if (rc)
        return rc;
    p->next_va += (pages + 16) * MV_PAGE_SIZE; /* a guard gap */
    *va = v.start;
    return 0;
}

/* Clear the PTEs of a VMA, gather them, drop the frames and empty tables. */
static int zap(mv_sim_guest_t *g, int pid, struct proc *p, struct vma *v)
{
    for (uint64_t i = 0; i < v->pages; i++) {
        if (v->ids[i] == ID_ABSENT)
            continue;
        uint64_t va = v->start + i * MV_PAGE_SIZE, e;
        mv_gfn_t path[4];
        int rc = walk_to_l1(g, p, va, false, path);
        if (rc == MV_ENOENT)
            continue;
        if (rc || (rc = pt_read(g, path[0], idx(va, 1), &e)))
            return rc;
        if (!(e & X86_P))
            continue;
        if ((rc = pt_write(g, path[0], idx(va, 1), 0)))
            return rc;
        g->used[path[0]]--;
        gather(g, pid, va);
        if ((rc = gput(g, entry_gfn(g, e))) || (rc = prune(g, va, path)))
            return rc;
    }
    return 0;
}

static void drop_vma(struct proc *p, uint32_t at)
{
    free(p->v[at].ids);
    p->v[at] = p->v[--p->nv];
}

static int locked_munmap(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va)
{
    struct proc *p = g ? cur(g, vcpu) : NULL;
    uint32_t at;
    struct vma *v = p ? find_vma(p, va, &at) : NULL;
    if (!v || v->start != va)
        return MV_EINVAL;
    g->vc = vcpu;
    g->st.ops[MV_SIM_GOP_MUNMAP]++;
    int rc = zap(g, g->running[vcpu], p, v);
    int rc2 = commit(g);
    drop_vma(p, at);
    return rc ? rc : rc2;
}

static int locked_mprotect(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va, uint32_t prot)
{
    struct proc *p = g ? cur(g, vcpu) : NULL;
    struct vma *v = p ? find_vma(p, va, NULL) : NULL;
    if (!v || v->start != va)
        return MV_EINVAL;
    g->vc = vcpu;
    g->st.ops[MV_SIM_GOP_MPROTECT]++;
    int rc = 0;
    for (uint64_t i = 0; i < v->pages && !rc; i++) {
        if (v->ids[i] == ID_ABSENT)
            continue;
        uint64_t a = v->start + i * MV_PAGE_SIZE, e;
        mv_gfn_t path[4];
        if ((rc = walk_to_l1(g, p, a, false, path)) == MV_ENOENT) {
            rc = 0;
            continue;
        }
        if (rc || (rc = pt_read(g, path[0], idx(a, 1), &e)) || !(e & X86_P))
            continue;
        /* Write permission comes back through the fault handler (it may need a copy). */
        uint64_t n = (e & X86_ADDR) | leaf_flags(prot, (e & X86_RW) != 0);
        if (n != (e & ~(X86_A | X86_D)) && !(rc = pt_write(g, path[0], idx(a, 1), n)))
            gather(g, g->running[vcpu], a);
    }
    v->prot = prot;
    int rc2 = commit(g);
    return rc ? rc : rc2;
}

static int locked_mapping(const mv_sim_guest_t *g, uint32_t vcpu, uint32_t i, uint64_t *va,
                         uint64_t *pages, uint32_t *prot)
{
    const struct proc *p = g && vcpu < g->c.nr_vcpus && locked_alive(g, g->running[vcpu])
                               ? &g->p[g->running[vcpu]] : NULL;
    if (!p || i >= p->nv)
        return MV_ENOENT;
    *va = p->v[i].start;
    *pages = p->v[i].pages;
    *prot = p->v[i].prot;
    return 0;
}

/* ---- Content and faults ----------------------------------------------------------------------- */

static uint64_t pick_content(mv_sim_guest_t *g)
{
    uint64_t r = rnd(g) % 100;
    uint32_t pool = g->c.pool_pages ? g->c.pool_pages : 256;
    if (r < g->c.zero_pct) {
        g->st.pages_zero++;
        return 0;
    }
    if (r < (uint64_t)g->c.zero_pct + g->c.pool_pct) {
        g->st.pages_pool++;
        return ID_POOL | (rnd(g) % pool);
    }
    g->st.pages_unique++;
    return ID_UNIQUE | ((uint64_t)g->c.domid << 40) | ++g->unique;
}

static uint64_t file_content(uint64_t file, uint64_t i)
{
    return ID_POOL | ((file << 20) + i);
}

/* Handle the #PF the access got; 0: retry it. */
static int page_fault(mv_sim_guest_t *g, int pid, struct proc *p, uint64_t va, uint32_t op,
                      uint32_t code)
{
    uint64_t page = va & ~(uint64_t)0xfff;
    struct vma *v = find_vma(p, page, NULL);
    uint32_t need = op == MV_SIM_WRITE ? MV_SIM_PROT_W
                    : op == MV_SIM_FETCH ? MV_SIM_PROT_X : MV_SIM_PROT_R;
    if (!v || !(v->prot & need) || (code & MV_SIM_PF_RSVD)) {
        g->st.faults[MV_SIM_GF_SEGV]++;
        return MV_EFAULT;
    }
    uint64_t i = (page - v->start) >> MV_PAGE_SHIFT;
    mv_gfn_t path[4];
    int rc = walk_to_l1(g, p, page, true, path);
    uint64_t e = 0;
    if (rc || (rc = pt_read(g, path[0], idx(page, 1), &e)))
        return rc;
    if (!(e & X86_P)) {
        mv_gfn_t n;
        if ((rc = galloc(g, &n)))
            return rc;
        if (v->ids[i] == ID_ABSENT)
            v->ids[i] = v->file ? file_content(v->file, i) : pick_content(g);
        fill(v->ids[i], g->buf);
        if ((rc = kcopy(g, n, 0, g->buf, MV_PAGE_SIZE, true)) ||
            (rc = pt_write(g, path[0], idx(page, 1), frame_addr(g, n) | leaf_flags(v->prot, true))))
            return rc;
        g->used[path[0]]++;
        g->st.faults[MV_SIM_GF_DEMAND]++;
        return commit(g);
    }
    if (op != MV_SIM_WRITE || (e & X86_RW)) {
        /* A stale translation (another vCPU changed the entry): nothing to do but retry. */
        mv_sim_invlpg(g->sv[g->vc], page);
        return 0;
    }
    mv_gfn_t old = entry_gfn(g, e);
    uint64_t n = e;
    if (g->ref[old] > 1) {
        mv_gfn_t c;
        if ((rc = galloc(g, &c)) || (rc = kcopy(g, old, 0, g->buf, MV_PAGE_SIZE, false)) ||
            (rc = kcopy(g, c, 0, g->buf, MV_PAGE_SIZE, true)))
            return rc;
        n = frame_addr(g, c) | (e & ~X86_ADDR);
        g->st.faults[MV_SIM_GF_COW]++;
        if ((rc = gput(g, old)))
            return rc;
    } else {
        g->st.faults[MV_SIM_GF_REUSE]++;
    }
    if ((rc = pt_write(g, path[0], idx(page, 1), (n | X86_RW) & ~(X86_A | X86_D))))
        return rc;
    gather(g, pid, page);
    return commit(g);
}

/*
 * A user access through the vCPU with the guest's fault handling. The access itself is
 * guest code and runs without the lock (the process runs on this vCPU alone in threaded
 * mode); the fault handler takes it.
 */
static int user_rw(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va, void *buf, size_t len,
                   uint32_t op)
{
    if (!g || vcpu >= g->c.nr_vcpus)
        return MV_EINVAL;
    pthread_mutex_lock(&g->lock);
    bool ok = cur(g, vcpu) != NULL;
    pthread_mutex_unlock(&g->lock);
    if (!ok)
        return MV_EINVAL;
    int rc = 0;
    for (int tries = 0; tries < 8; tries++) {
        struct mv_sim_result r;
        uint32_t k = mv_sim_rw(g->sv[vcpu], va, buf, len, op, MV_SIM_USER, &r);
        if (k == MV_SIM_OK)
            return 0;
        pthread_mutex_lock(&g->lock);
        struct proc *p = cur(g, vcpu);
        g->vc = vcpu;
        if (k != MV_SIM_PAGE_FAULT)
            rc = err(g, k == MV_SIM_ENGINE_ERROR ? r.rc : MV_EFAULT);
        else
            rc = p ? page_fault(g, g->running[vcpu], p, va, op, r.error_code) : MV_EINVAL;
        pthread_mutex_unlock(&g->lock);
        if (rc)
            return rc;
    }
    pthread_mutex_lock(&g->lock);
    rc = err(g, MV_EAGAIN); /* the fault handler never made progress */
    pthread_mutex_unlock(&g->lock);
    return rc;
}

static uint64_t *page_id(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va)
{
    struct proc *p = cur(g, vcpu);
    struct vma *v = p ? find_vma(p, va, NULL) : NULL;
    return v ? &v->ids[((va & ~(uint64_t)0xfff) - v->start) >> MV_PAGE_SHIFT] : NULL;
}

static void count_op(mv_sim_guest_t *g, unsigned op)
{
    pthread_mutex_lock(&g->lock);
    g->st.ops[op]++;
    pthread_mutex_unlock(&g->lock);
}

int mv_sim_guest_touch(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va)
{
    uint64_t x;
    if (g)
        count_op(g, MV_SIM_GOP_TOUCH);
    return user_rw(g, vcpu, va & ~(uint64_t)0xfff, &x, sizeof(x), MV_SIM_READ);
}

int mv_sim_guest_load(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va, uint64_t *val)
{
    return user_rw(g, vcpu, va, val, sizeof(*val), MV_SIM_READ);
}

int mv_sim_guest_read(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va)
{
    if (!g || vcpu >= g->c.nr_vcpus)
        return MV_EINVAL;
    count_op(g, MV_SIM_GOP_READ);
    va &= ~(uint64_t)0xfff;
    uint64_t *ub = g->ubuf + 512 * (size_t)vcpu;
    int rc = user_rw(g, vcpu, va, ub, MV_PAGE_SIZE, MV_SIM_READ);
    if (rc)
        return rc;
    pthread_mutex_lock(&g->lock);
    uint64_t *id = page_id(g, vcpu, va);
    if (id) {
        fill(*id, g->buf);
        if (memcmp(g->buf, ub, MV_PAGE_SIZE)) {
            g->st.content_errors++;
            rc = MV_EUCLEAN;
            if (getenv("MEMVIRT_SIM_DEBUG")) {
                struct mv_sim_result a, o;
                mv_sim_translate(g->sv[vcpu], va, MV_SIM_READ, MV_SIM_USER, &a);
                mv_sim_oracle(g->sv[vcpu], va, MV_SIM_READ, MV_SIM_USER, &o);
                fprintf(stderr, "content d%u v%u va %#llx id %#llx: vcpu %s mfn %#llx, oracle "
                                "%s mfn %#llx, stale uses %llu\n", g->c.domid, vcpu,
                        (unsigned long long)va, (unsigned long long)*id,
                        mv_sim_kind_name(a.kind), (unsigned long long)a.mfn,
                        mv_sim_kind_name(o.kind), (unsigned long long)o.mfn,
                        (unsigned long long)g->sv[vcpu]->st.stale_uses);
            }
        }
    }
    pthread_mutex_unlock(&g->lock);
    return rc;
}

int mv_sim_guest_write(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va)
{
    if (!g || vcpu >= g->c.nr_vcpus)
        return MV_EINVAL;
    pthread_mutex_lock(&g->lock);
    bool ok = cur(g, vcpu) != NULL;
    uint64_t id = 0;
    if (ok) {
        g->st.ops[MV_SIM_GOP_WRITE]++;
        id = ID_UNIQUE | ((uint64_t)g->c.domid << 40) | ++g->unique;
    }
    pthread_mutex_unlock(&g->lock);
    if (!ok)
        return MV_EINVAL;
    va &= ~(uint64_t)0xfff;
    uint64_t *ub = g->ubuf + 512 * (size_t)vcpu;
    fill(id, ub);
    int rc = user_rw(g, vcpu, va, ub, MV_PAGE_SIZE, MV_SIM_WRITE);
    if (!rc) {
        pthread_mutex_lock(&g->lock);
        uint64_t *pid = page_id(g, vcpu, va);
        if (pid)
            *pid = id;
        pthread_mutex_unlock(&g->lock);
    }
    return rc;
}

static int locked_shootdown(mv_sim_guest_t *g, uint32_t vcpu)
{
    struct proc *p = g ? cur(g, vcpu) : NULL;
    if (!p)
        return MV_EINVAL;
    g->vc = vcpu;
    g->gpid = g->running[vcpu];
    g->gather_all = true;
    return commit(g);
}

/* ---- fork, exec, exit ------------------------------------------------------------------------- */

static int locked_fork(mv_sim_guest_t *g, uint32_t vcpu, int pid, int *child)
{
    struct proc *p = g ? proc_of(g, pid) : NULL;
    if (!p || vcpu >= g->c.nr_vcpus || !child)
        return MV_EINVAL;
    if (busy_elsewhere(g, vcpu, pid))
        return MV_EBUSY;
    g->vc = vcpu;
    g->st.ops[MV_SIM_GOP_FORK]++;
    int cpid, rc = new_proc(g, &cpid);
    if (rc)
        return rc;
    p = &g->p[pid]; /* new_proc may have moved the array */
    struct proc *c = &g->p[cpid];
    c->next_va = p->next_va;
    for (uint32_t k = 0; k < p->nv && !rc; k++) {
        struct vma *v = &p->v[k];
        if ((rc = add_vma(c, v)))
            break;
        for (uint64_t i = 0; i < v->pages && !rc; i++) {
            if (v->ids[i] == ID_ABSENT)
                continue;
            uint64_t va = v->start + i * MV_PAGE_SIZE, e;
            mv_gfn_t pp[4], cp[4];
            if ((rc = walk_to_l1(g, p, va, false, pp)) == MV_ENOENT) {
                rc = 0;
                continue;
            }
            if (rc || (rc = pt_read(g, pp[0], idx(va, 1), &e)) || !(e & X86_P))
                continue;
            uint64_t ro = e & ~(X86_RW | X86_D | X86_A);
            if ((e & X86_RW) && !(rc = pt_write(g, pp[0], idx(va, 1), ro)))
                gather(g, pid, va);
            if (rc || (rc = walk_to_l1(g, c, va, true, cp)) ||
                (rc = pt_write(g, cp[0], idx(va, 1), ro)))
                break;
            g->used[cp[0]]++;
            g->ref[entry_gfn(g, e)]++;
        }
    }
    int rc2 = commit(g);
    *child = cpid;
    return rc ? rc : rc2;
}

static int zap_all(mv_sim_guest_t *g, int pid, struct proc *p)
{
    int rc = 0;
    while (p->nv && !rc) {
        rc = zap(g, pid, p, &p->v[p->nv - 1]);
        drop_vma(p, p->nv - 1);
    }
    int rc2 = commit(g);
    p->next_va = USER_BASE;
    return rc ? rc : rc2;
}

static int locked_exec(mv_sim_guest_t *g, uint32_t vcpu, int pid)
{
    struct proc *p = g ? proc_of(g, pid) : NULL;
    if (!p || vcpu >= g->c.nr_vcpus)
        return MV_EINVAL;
    if (busy_elsewhere(g, vcpu, pid))
        return MV_EBUSY;
    g->vc = vcpu;
    g->st.ops[MV_SIM_GOP_EXEC]++;
    return zap_all(g, pid, p);
}

static int locked_exit(mv_sim_guest_t *g, uint32_t vcpu, int pid)
{
    struct proc *p = g ? proc_of(g, pid) : NULL;
    if (!p || vcpu >= g->c.nr_vcpus)
        return MV_EINVAL;
    if (busy_elsewhere(g, vcpu, pid))
        return MV_EBUSY;
    g->vc = vcpu;
    g->st.ops[MV_SIM_GOP_EXIT]++;
    int rc = zap_all(g, pid, p);
    for (uint32_t v = 0; v < g->c.nr_vcpus && !rc; v++)
        if (g->running[v] == pid)
            rc = locked_switch(g, v, -1);
    if (rc)
        return rc;
    if (!g->c.hvm && (rc = mmuext(g, vcpu, MV_PV_UNPIN_TABLE, g->mfn[p->l4])))
        return rc;
    free(p->v);
    p->v = NULL;
    p->nv = p->cap = 0;
    p->live = false;
    g->st.processes--;
    g->st.page_tables--;
    rc = gput(g, p->l4);
    int rc2 = commit(g);
    return rc ? rc : rc2;
}

/* ---- Boot and teardown -------------------------------------------------------------------------- */

static int boot_hvm(mv_sim_guest_t *g)
{
    /* The boot loader: tables written with paging off, then CR3, CR0, CR4, EFER. */
    uint64_t nl2 = (g->pages + (1u << 18) - 1) >> 18;
    memset(g->buf, 0, sizeof(g->buf));
    g->buf[DMAP_SLOT] = (2ull << MV_PAGE_SHIFT) | X86_P | X86_RW;
    int rc = mv_guest_phys_write(g->d, 1ull << MV_PAGE_SHIFT, g->buf, MV_PAGE_SIZE);
    memset(g->buf, 0, sizeof(g->buf));
    for (uint64_t k = 0; k < nl2 && !rc; k++)
        g->buf[k] = ((3 + k) << MV_PAGE_SHIFT) | X86_P | X86_RW;
    if (!rc)
        rc = mv_guest_phys_write(g->d, 2ull << MV_PAGE_SHIFT, g->buf, MV_PAGE_SIZE);
    for (uint64_t k = 0; k < nl2 && !rc; k++) {
        for (unsigned i = 0; i < 512; i++) {
            uint64_t gpa = ((k << 9) + i) << 21;
            g->buf[i] = gpa < (g->pages << MV_PAGE_SHIFT)
                            ? gpa | X86_P | X86_RW | X86_PS | X86_G | X86_A | X86_D | X86_NX
                            : 0;
        }
        rc = mv_guest_phys_write(g->d, (3 + k) << MV_PAGE_SHIFT, g->buf, MV_PAGE_SIZE);
    }
    for (uint64_t k = 1; k < 3 + nl2; k++)
        g->ref[k] = 1;
    g->idle_l4 = 1;
    g->st.page_tables = 2 + nl2;
    return rc ? rc : (int)(3 + nl2);
}

static int boot_pv(mv_sim_guest_t *g)
{
    memset(g->buf, 0, sizeof(g->buf));
    int rc = mv_guest_phys_write(g->d, 1ull << MV_PAGE_SHIFT, g->buf, MV_PAGE_SIZE);
    if (rc || (rc = mmuext(g, 0, MV_PV_PIN_L4_TABLE, g->mfn[1])))
        return rc;
    g->ref[1] = 1;
    g->idle_l4 = 1;
    g->st.page_tables = 1;
    return 2;
}

int mv_sim_guest_create(mv_sim_t *s, const struct mv_sim_guest_config *cfg,
                        mv_sim_guest_t **out)
{
    if (!s || !cfg || !out || cfg->size < sizeof(*cfg) || !cfg->nr_vcpus ||
        cfg->mem_pages < 1024 || cfg->mem_pages % 512 || cfg->mem_pages > (1ull << 24) ||
        cfg->zero_pct + cfg->pool_pct > 100)
        return MV_EINVAL;
    mv_sim_guest_t *g = calloc(1, sizeof(*g));
    if (!g)
        return MV_ENOMEM;
    g->s = s;
    g->c = *cfg;
    g->pages = cfg->mem_pages;
    g->rng = cfg->seed ^ ((uint64_t)cfg->domid << 32);
    g->sv = calloc(cfg->nr_vcpus, sizeof(*g->sv));
    g->running = calloc(cfg->nr_vcpus, sizeof(*g->running));
    g->ubuf = calloc(cfg->nr_vcpus, MV_PAGE_SIZE);
    pthread_mutex_init(&g->lock, NULL);
    g->mfn = calloc(g->pages, sizeof(*g->mfn));
    g->ref = calloc(g->pages, sizeof(*g->ref));
    g->used = calloc(g->pages, sizeof(*g->used));
    g->freel = calloc(g->pages, sizeof(*g->freel));
    int rc = MV_ENOMEM;
    if (!g->sv || !g->running || !g->ubuf || !g->mfn || !g->ref || !g->used || !g->freel)
        goto fail;
    struct mv_domain_config dc = {.size = sizeof(dc), .domid = cfg->domid,
                                  .type = cfg->hvm ? MV_DOMAIN_HVM : MV_DOMAIN_PV,
                                  .paging = !cfg->hvm ? MV_PAGING_PV
                                            : cfg->hap ? MV_PAGING_HAP : MV_PAGING_SHADOW,
                                  .nr_vcpus = cfg->nr_vcpus, .max_pages = g->pages,
                                  .node_affinity = MV_NODE_ANY,
                                  .shadow_pool_pages = cfg->hvm && !cfg->hap
                                                           ? cfg->shadow_pool_pages : 0,
                                  .shadow_pool_max_pages = cfg->hvm && !cfg->hap
                                                               ? cfg->shadow_pool_pages : 0,
                                  .flags = cfg->hvm && !cfg->hap && cfg->shadow_sync
                                               ? MV_DOMF_SHADOW_SYNC : 0};
    if ((rc = mv_domain_create(mv_sim_host(s), &dc, &g->d)))
        goto fail;
    for (mv_gfn_t gf = 0; gf < g->pages && !rc; gf += 512) {
        uint64_t done;
        while ((rc = mv_populate_physmap(g->d, &gf, 1, 9, MV_NODE_ANY, &done)) == MV_EAGAIN &&
               !done)
            ;
    }
    for (mv_gfn_t gf = 0; gf < g->pages && !rc; gf++) {
        struct mv_p2m_entry e;
        rc = mv_p2m_lookup(g->d, gf, &e);
        g->mfn[gf] = e.mfn;
    }
    if (rc || (rc = mv_sim_attach(s, g->d)))
        goto fail;
    for (uint32_t v = 0; v < cfg->nr_vcpus; v++) {
        g->sv[v] = mv_sim_vcpu(s, g->d, v);
        g->running[v] = -1;
    }
    int first = cfg->hvm ? boot_hvm(g) : boot_pv(g);
    if (first < 0) {
        rc = first;
        goto fail;
    }
    struct mv_vcpu_state st = {.size = sizeof(st), .cr0 = X86_CR0_PE | MV_CR0_WP | MV_CR0_PG,
                               .cr3 = cfg->hvm ? 1ull << MV_PAGE_SHIFT : 0,
                               .cr4 = MV_CR4_PAE | MV_CR4_PGE,
                               .efer = MV_EFER_LME | X86_EFER_LMA | MV_EFER_NXE};
    for (uint32_t v = 0; v < cfg->nr_vcpus && !rc; v++) {
        rc = mv_vcpu_set_state(g->sv[v]->v, &st);
        if (!rc && !cfg->hvm)
            rc = mmuext(g, v, MV_PV_NEW_BASEPTR, g->mfn[1]);
    }
    if (rc)
        goto fail;
    /* Hand out low frames first: a stack with the highest gfn at the bottom. */
    for (mv_gfn_t gf = g->pages; gf-- > (mv_gfn_t)first;)
        g->freel[g->nfree++] = gf;
    *out = g;
    return 0;
fail:
    mv_sim_guest_destroy(g);
    return rc;
}

void mv_sim_guest_destroy(mv_sim_guest_t *g)
{
    if (!g)
        return;
    if (g->d) {
        mv_sim_detach(g->s, g->d);
        int rc;
        while ((rc = mv_domain_destroy(g->d)) == MV_EAGAIN)
            ;
    }
    for (uint32_t i = 0; i < g->np; i++) {
        for (uint32_t k = 0; k < g->p[i].nv; k++)
            free(g->p[i].v[k].ids);
        free(g->p[i].v);
    }
    free(g->p);
    free(g->pend);
    free(g->sv);
    free(g->running);
    free(g->ubuf);
    pthread_mutex_destroy(&g->lock);
    free(g->mfn);
    free(g->ref);
    free(g->used);
    free(g->freel);
    free(g);
}

mv_domain_t *mv_sim_guest_domain(const mv_sim_guest_t *g)
{
    return g->d;
}

static void locked_stats(const mv_sim_guest_t *g, struct mv_sim_guest_stats *st)
{
    *st = g->st;
    st->pages_total = g->pages;
    st->pages_free = g->nfree;
}

const char *mv_sim_guest_op_name(unsigned op)
{
    static const char *const n[MV_SIM_GOP_NR] = {
        "mmap", "munmap", "mprotect", "touch", "read", "write", "fork", "exec", "exit",
        "switch", "shootdown"};
    return op < MV_SIM_GOP_NR ? n[op] : "?";
}

const char *mv_sim_guest_fault_name(unsigned f)
{
    static const char *const n[MV_SIM_GF_NR] = {"demand", "cow", "reuse", "segv"};
    return f < MV_SIM_GF_NR ? n[f] : "?";
}

/* ---- The public entry points: the model's lock around each ---------------------------------- */

#define LOCKED(g, expr)                                                                        \
    do {                                                                                       \
        pthread_mutex_lock(&(g)->lock);                                                        \
        expr;                                                                                  \
        pthread_mutex_unlock(&(g)->lock);                                                      \
    } while (0)

int mv_sim_guest_switch(mv_sim_guest_t *g, uint32_t vcpu, int pid)
{
    int rc = MV_EINVAL;
    if (g)
        LOCKED(g, rc = locked_switch(g, vcpu, pid));
    return rc;
}

int mv_sim_guest_current(const mv_sim_guest_t *g, uint32_t vcpu)
{
    mv_sim_guest_t *m = (mv_sim_guest_t *)(uintptr_t)g;
    int pid;
    LOCKED(m, pid = locked_current(g, vcpu));
    return pid;
}

bool mv_sim_guest_alive(const mv_sim_guest_t *g, int pid)
{
    mv_sim_guest_t *m = (mv_sim_guest_t *)(uintptr_t)g;
    bool alive;
    LOCKED(m, alive = locked_alive(g, pid));
    return alive;
}

int mv_sim_guest_spawn(mv_sim_guest_t *g, uint32_t vcpu, int *pid)
{
    int rc = MV_EINVAL;
    if (g)
        LOCKED(g, rc = locked_spawn(g, vcpu, pid));
    return rc;
}

int mv_sim_guest_mmap(mv_sim_guest_t *g, uint32_t vcpu, uint64_t pages, uint32_t prot,
                      uint64_t file, uint64_t *va)
{
    int rc = MV_EINVAL;
    if (g)
        LOCKED(g, rc = locked_mmap(g, vcpu, pages, prot, file, va));
    return rc;
}

int mv_sim_guest_munmap(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va)
{
    int rc = MV_EINVAL;
    if (g)
        LOCKED(g, rc = locked_munmap(g, vcpu, va));
    return rc;
}

int mv_sim_guest_mprotect(mv_sim_guest_t *g, uint32_t vcpu, uint64_t va, uint32_t prot)
{
    int rc = MV_EINVAL;
    if (g)
        LOCKED(g, rc = locked_mprotect(g, vcpu, va, prot));
    return rc;
}

int mv_sim_guest_mapping(const mv_sim_guest_t *g, uint32_t vcpu, uint32_t i, uint64_t *va,
                         uint64_t *pages, uint32_t *prot)
{
    mv_sim_guest_t *m = (mv_sim_guest_t *)(uintptr_t)g;
    int rc = MV_ENOENT;
    if (g)
        LOCKED(m, rc = locked_mapping(g, vcpu, i, va, pages, prot));
    return rc;
}

int mv_sim_guest_shootdown(mv_sim_guest_t *g, uint32_t vcpu)
{
    int rc = MV_EINVAL;
    if (g)
        LOCKED(g, rc = locked_shootdown(g, vcpu));
    return rc;
}

int mv_sim_guest_fork(mv_sim_guest_t *g, uint32_t vcpu, int pid, int *child)
{
    int rc = MV_EINVAL;
    if (g)
        LOCKED(g, rc = locked_fork(g, vcpu, pid, child));
    return rc;
}

int mv_sim_guest_exec(mv_sim_guest_t *g, uint32_t vcpu, int pid)
{
    int rc = MV_EINVAL;
    if (g)
        LOCKED(g, rc = locked_exec(g, vcpu, pid));
    return rc;
}

int mv_sim_guest_exit(mv_sim_guest_t *g, uint32_t vcpu, int pid)
{
    int rc = MV_EINVAL;
    if (g)
        LOCKED(g, rc = locked_exit(g, vcpu, pid));
    return rc;
}

void mv_sim_guest_stats(const mv_sim_guest_t *g, struct mv_sim_guest_stats *st)
{
    mv_sim_guest_t *m = (mv_sim_guest_t *)(uintptr_t)g;
    LOCKED(m, locked_stats(g, st));
}
