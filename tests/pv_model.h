/*
 * tests/pv_model.h - a reference model of PV page-table validation, and a driver that
 * runs seeded random sequences against the engine and the model side by side.
 *
 * The model is deliberately simple and separate from pv/: recursion instead of budgeted
 * walks, a whole-state copy instead of rollback (an operation is applied to a copy, kept
 * only when it succeeds), counts recomputed from its own rules. Table contents are modelled
 * in slots 0..7 of every frame (the generator writes nowhere else). After every step the
 * references, type, type count, validated and pinned state of every frame, the modelled
 * slots, the base pointers and the PV statistics must agree; a full audit runs every
 * `audit_every` steps and at the end.
 */
#ifndef MV_TEST_PV_MODEL_H
#define MV_TEST_PV_MODEL_H

#include <stdlib.h>

#include "pv_helpers.h"

#define PVM_DOMS 3
#define PVM_FRAMES 40
#define PVM_SLOTS 8
#define PVM_NF (PVM_DOMS * PVM_FRAMES)

struct pvm_frame {
    mv_mfn_t mfn;
    unsigned dom;       /* index of the owning domain */
    uint32_t refs;
    unsigned type;      /* meaningful while tcount > 0 */
    uint32_t tcount;
    bool validated;
    bool pinned;
    int lin;            /* > 0: target of linear entries, < 0: holds them */
    uint64_t e[PVM_SLOTS];
};

struct pvm_state {
    struct pvm_frame f[PVM_NF];
    mv_mfn_t kbase[PVM_DOMS];
    unsigned nlin[PVM_DOMS];
};

struct pvm {
    mv_host_t *h;
    mv_domain_t *d[PVM_DOMS];
    mv_vcpu_t *v[PVM_DOMS];
    uint32_t flags[PVM_DOMS];
    mv_mfn_t end;
    int32_t *index; /* mfn -> model frame, -1 */
    struct pvm_state s;
    struct th_rng rng;
    uint64_t ok, refused, preempted;
};

static struct pvm_frame *pvm_find(struct pvm *m, struct pvm_state *s, mv_mfn_t mfn)
{
    if (mfn >= m->end || m->index[mfn] < 0)
        return NULL;
    return &s->f[m->index[mfn]];
}

static int pvm_bits(struct pvm *m, unsigned level, uint64_t e)
{
    if (!(e & PTE_P)) {
        mv_mfn_t a = (e & MV_PTE_ADDR_MASK) >> 12;
        return a && a < m->end ? MV_EFAULT : 0;
    }
    if (e & MV_PTE_ADDR_MASK & ~((1ull << 40) - 1))
        return MV_ERANGE;
    if (e & 0x7ff0000000000000ull)
        return MV_EINVAL;
    if (level == 1)
        return 0;
    if ((level == 2 || level == 3) && (e & MV_PTE_PS))
        return MV_EOPNOTSUPP;
    if (e & (MV_PTE_PWT | MV_PTE_PCD | MV_PTE_G | MV_PTE_PS))
        return MV_EINVAL;
    return 0;
}

static int pvm_owner(struct pvm *m, struct pvm_state *s, mv_mfn_t mfn, unsigned dom,
                     struct pvm_frame **out)
{
    struct pvm_frame *f = pvm_find(m, s, mfn);
    *out = f;
    if (!f)
        return mfn < m->end ? MV_EPERM : MV_ERANGE;
    return f->dom == dom ? 0 : MV_EXDEV;
}

static int pvm_take(struct pvm *m, struct pvm_state *s, struct pvm_frame *tbl, unsigned level,
                    uint64_t e);
static void pvm_drop(struct pvm *m, struct pvm_state *s, struct pvm_frame *tbl, unsigned level,
                     uint64_t e);

/* Validate a table just typed (count 1): its entries in order, depth first. */
static int pvm_validate(struct pvm *m, struct pvm_state *s, struct pvm_frame *f)
{
    for (unsigned i = 0; i < PVM_SLOTS; i++) {
        int rc = pvm_bits(m, f->type, f->e[i]);
        if (rc || (rc = pvm_take(m, s, f, f->type, f->e[i])))
            return rc;
    }
    f->validated = true;
    return 0;
}

/* A typed reference of table level `level` (a root or an upper entry). */
static int pvm_get_table(struct pvm *m, struct pvm_state *s, struct pvm_frame *t, unsigned level)
{
    if (t->tcount) {
        if (t->type != level || !t->validated)
            return MV_EBUSY;
        t->tcount++;
        t->refs++;
        return 0;
    }
    t->type = level;
    t->tcount = 1;
    t->validated = false;
    t->refs++;
    return pvm_validate(m, s, t);
}

static void pvm_put_table(struct pvm *m, struct pvm_state *s, struct pvm_frame *t)
{
    if (t->tcount == 1) {
        for (unsigned i = 0; i < PVM_SLOTS; i++)
            pvm_drop(m, s, t, t->type, t->e[i]);
        t->validated = false;
    }
    t->tcount--;
    t->refs--;
}

static int pvm_take(struct pvm *m, struct pvm_state *s, struct pvm_frame *tbl, unsigned level,
                    uint64_t e)
{
    if (!(e & PTE_P))
        return 0;
    mv_mfn_t mfn = (e & MV_PTE_ADDR_MASK) >> 12;
    unsigned dom = tbl->dom;
    bool linear_ok = m->flags[dom] & MV_DOMF_LINEAR_PT;
    struct pvm_frame *t;
    int rc;
    if (level == 1) {
        if ((rc = pvm_owner(m, s, mfn, dom, &t)))
            return rc;
        if (e & PTE_RW) {
            if (t->tcount && t->type != MV_PGT_WRITABLE)
                return MV_EBUSY;
            t->type = MV_PGT_WRITABLE;
            t->tcount++;
        }
        t->refs++;
        return 0;
    }
    if (mfn == tbl->mfn)
        return !linear_ok ? MV_EPERM : (e & PTE_RW) ? MV_EACCES : 0;
    if ((rc = pvm_owner(m, s, mfn, dom, &t)))
        return rc;
    if (t->tcount && t->type == level) {
        if (!linear_ok)
            return MV_EPERM;
        if (e & PTE_RW)
            return MV_EACCES;
        if (!t->validated)
            return MV_EBUSY;
        if (tbl->lin > 0 || t->lin < 0)
            return MV_EBUSY;
        if (s->nlin[dom] + !tbl->lin + !t->lin > MV_PV_LINEAR_TABLES)
            return MV_ENOSPC;
        s->nlin[dom] += !tbl->lin + !t->lin;
        tbl->lin--;
        t->lin++;
        t->tcount++;
        t->refs++;
        return 0;
    }
    return pvm_get_table(m, s, t, level - 1);
}

static void pvm_drop(struct pvm *m, struct pvm_state *s, struct pvm_frame *tbl, unsigned level,
                     uint64_t e)
{
    if (!(e & PTE_P))
        return;
    mv_mfn_t mfn = (e & MV_PTE_ADDR_MASK) >> 12;
    struct pvm_frame *t = pvm_find(m, s, mfn);
    assert_non_null(t);
    if (level == 1) {
        if (e & PTE_RW)
            t->tcount--;
        t->refs--;
        return;
    }
    if (t == tbl)
        return;
    if (t->type == level) {
        tbl->lin++;
        t->lin--;
        s->nlin[tbl->dom] -= !tbl->lin + !t->lin;
    }
    pvm_put_table(m, s, t);
}

/* ---- Operations on the model (applied to a copy by the caller) ---------------------------- */

static int pvm_update(struct pvm *m, struct pvm_state *s, unsigned dom, uint64_t ptr, uint64_t val)
{
    if (ptr & 3)
        return MV_EOPNOTSUPP;
    if (ptr & 7)
        return MV_EINVAL;
    struct pvm_frame *f;
    mv_mfn_t mfn = ptr >> 12;
    unsigned slot = (ptr & 0xfff) >> 3;
    int rc = pvm_owner(m, s, mfn, dom, &f);
    if (rc)
        return rc;
    assert_true(slot < PVM_SLOTS);
    if (f->tcount && f->type >= MV_PGT_L1 && f->type <= MV_PGT_L4) {
        uint64_t old = f->e[slot];
        if ((rc = pvm_bits(m, f->type, val)))
            return rc;
        if (old == val)
            return 0;
        if ((old & val & PTE_P) && !((old ^ val) & ~(PTE_A | PTE_D))) {
            f->e[slot] = val;
            return 0;
        }
        if ((rc = pvm_take(m, s, f, f->type, val)))
            return rc;
        f->e[slot] = val;
        pvm_drop(m, s, f, f->type, old);
        return 0;
    }
    if (f->tcount && f->type != MV_PGT_WRITABLE)
        return MV_EBUSY;
    f->e[slot] = val;
    return 0;
}

static int pvm_pin(struct pvm *m, struct pvm_state *s, unsigned dom, mv_mfn_t mfn, unsigned level)
{
    struct pvm_frame *f;
    int rc = pvm_owner(m, s, mfn, dom, &f);
    if (rc)
        return rc;
    if (f->pinned)
        return MV_EALREADY;
    if ((rc = pvm_get_table(m, s, f, level)))
        return rc;
    f->pinned = true;
    return 0;
}

static int pvm_unpin(struct pvm *m, struct pvm_state *s, unsigned dom, mv_mfn_t mfn)
{
    struct pvm_frame *f;
    int rc = pvm_owner(m, s, mfn, dom, &f);
    if (rc)
        return rc;
    if (!f->pinned)
        return MV_EINVAL;
    f->pinned = false;
    pvm_put_table(m, s, f);
    return 0;
}

static int pvm_base(struct pvm *m, struct pvm_state *s, unsigned dom, mv_mfn_t mfn)
{
    int rc;
    if (mfn != MV_INVALID_MFN) {
        struct pvm_frame *f;
        if ((rc = pvm_owner(m, s, mfn, dom, &f)) || (rc = pvm_get_table(m, s, f, MV_PGT_L4)))
            return rc;
    }
    mv_mfn_t old = s->kbase[dom];
    s->kbase[dom] = mfn;
    if (old != MV_INVALID_MFN)
        pvm_put_table(m, s, pvm_find(m, s, old));
    return 0;
}

/* ---- The engine side ---------------------------------------------------------------------- */

/* Run one mmu_update to its end (continuing preemptions, settling deferred releases). */
static int pvm_engine_update(struct pvm *m, mv_vcpu_t *v, uint64_t ptr, uint64_t val)
{
    struct mv_pv_mmu_update r = {.ptr = ptr, .val = val};
    uint32_t done;
    int rc;
    while ((rc = mv_pv_mmu_update(v, &r, 1, &done)) == MV_EAGAIN && done == 0)
        m->preempted++;
    if (rc == MV_EAGAIN)
        rc = 0;
    pvh_settle(v);
    return rc;
}

static int pvm_engine_op(struct pvm *m, mv_vcpu_t *v, uint32_t cmd, uint64_t arg)
{
    unsigned calls;
    int rc = pvh_op_all(v, cmd, arg, &calls);
    m->preempted += calls - 1;
    pvh_settle(v); /* a refused validation may leave a rollback to finish */
    return rc;
}

static void pvm_compare(struct pvm *m)
{
    unsigned tables[PVM_DOMS][4] = {{0}}, pinned[PVM_DOMS] = {0};
    for (unsigned i = 0; i < PVM_NF; i++) {
        const struct pvm_frame *f = &m->s.f[i];
        struct mv_page_info pi = pvh_info(m->h, f->mfn);
        bool want_valid = f->type == MV_PGT_WRITABLE || f->validated;
        if (pi.refs != f->refs || pi.type_refs != f->tcount ||
            (f->tcount && pi.type != f->type) ||
            (f->tcount && !!(pi.flags & MV_PAGEF_VALIDATED) != want_valid) ||
            !!(pi.flags & MV_PAGEF_PINNED) != f->pinned)
            fail_msg("frame %#llx: engine refs %u type %u/%u flags %#x, model refs %u type "
                     "%u/%u validated %d pinned %d",
                     (unsigned long long)f->mfn, pi.refs, pi.type, pi.type_refs, pi.flags,
                     f->refs, f->type, f->tcount, f->validated, f->pinned);
        const uint64_t *tab = pvh_tab(m->h, f->mfn);
        for (unsigned k = 0; k < PVM_SLOTS; k++)
            if (tab[k] != f->e[k])
                fail_msg("frame %#llx slot %u: engine %#llx model %#llx",
                         (unsigned long long)f->mfn, k, (unsigned long long)tab[k],
                         (unsigned long long)f->e[k]);
        if (f->tcount && f->validated && f->type <= 4)
            tables[f->dom][f->type - 1]++;
        pinned[f->dom] += f->pinned;
    }
    for (unsigned d = 0; d < PVM_DOMS; d++) {
        struct mv_pv_stats st = pvh_stats(m->d[d]);
        for (unsigned l = 0; l < 4; l++)
            assert_int_equal(st.tables[l], tables[d][l]);
        assert_int_equal(st.pinned, pinned[d]);
        assert_int_equal(st.partial, 0);
        mv_mfn_t k;
        assert_int_equal(mv_pv_get_baseptrs(m->v[d], &k, NULL), 0);
        assert_int_equal(k, m->s.kbase[d]);
    }
}

/* A random entry value for a table of domain `dom`, from `tbl`'s point of view. */
static uint64_t pvm_value(struct pvm *m, unsigned dom, mv_mfn_t tbl)
{
    struct th_rng *r = &m->rng;
    uint64_t p = th_rand_below(r, 100);
    mv_mfn_t t;
    if (p < 8)
        return 0;
    if (p < 10)
        return pte(m->s.f[dom * PVM_FRAMES].mfn, 0x2); /* not present, naming memory */
    if (p < 12)
        return 0xfffff000000ull | 0x60;                  /* not present, beyond memory */
    if (p < 20)
        t = tbl;
    else if (p < 25)
        t = m->s.f[((dom + 1) % PVM_DOMS) * PVM_FRAMES + th_rand_below(r, PVM_FRAMES)].mfn;
    else if (p < 27)
        t = m->end + th_rand_below(r, 100);
    else
        t = m->s.f[dom * PVM_FRAMES + th_rand_below(r, PVM_FRAMES)].mfn;
    uint64_t fl = PTE_P;
    if (th_rand_below(r, 2))
        fl |= PTE_RW;
    if (th_rand_below(r, 2))
        fl |= PTE_US;
    if (th_rand_below(r, 3) == 0)
        fl |= PTE_A;
    if (th_rand_below(r, 5) == 0)
        fl |= PTE_D;
    uint64_t q = th_rand_below(r, 100);
    if (q < 3)
        fl |= MV_PTE_PS;
    else if (q < 5)
        fl |= MV_PTE_PCD;
    else if (q < 6)
        fl |= 1ull << 55;
    else if (q < 7)
        fl |= 1ull << 45;
    return pte(t, fl);
}

/* Apply one update to model and engine; the results must agree. */
static void pvm_pair_update(struct pvm *m, unsigned dom, uint64_t ptr, uint64_t val)
{
    struct pvm_state *c = malloc(sizeof(*c));
    assert_non_null(c);
    memcpy(c, &m->s, sizeof(*c));
    int want = pvm_update(m, c, dom, ptr, val);
    int got = pvm_engine_update(m, m->v[dom], ptr, val);
    if (want != got)
        fail_msg("build: model %s, engine %s", mv_strerror_name(want), mv_strerror_name(got));
    if (!want)
        memcpy(&m->s, c, sizeof(*c));
    free(c);
}

/*
 * Build a plausible table: a frame with no type gets entries to tables one level down that
 * are validated already, or to frames with no type (validated on the way), or data frames
 * for an L1; then it is pinned (by the caller's next step) or hooked in.
 */
static struct pvm_frame *pvm_build(struct pvm *m, unsigned dom, unsigned level)
{
    struct th_rng *r = &m->rng;
    struct pvm_frame *f = &m->s.f[dom * PVM_FRAMES + th_rand_below(r, PVM_FRAMES)];
    if (f->tcount)
        return NULL;
    for (unsigned k = 0; k < PVM_SLOTS; k++) {
        if (th_rand_below(r, 3) == 0) {
            pvm_pair_update(m, dom, pvh_ptr(f->mfn, k), 0);
            continue;
        }
        struct pvm_frame *t = NULL;
        for (unsigned tries = 0; tries < 8 && !t; tries++) {
            struct pvm_frame *c = &m->s.f[dom * PVM_FRAMES + th_rand_below(r, PVM_FRAMES)];
            if (c == f)
                continue;
            if (level == 1 ? (!c->tcount || c->type == MV_PGT_WRITABLE)
                           : (!c->tcount || (c->type == level - 1 && c->validated)))
                t = c;
        }
        if (!t)
            continue;
        uint64_t fl = level == 1 ? (PTE_P | PTE_US | (th_rand_below(r, 2) ? PTE_RW : 0))
                                 : PTE_TABLE;
        pvm_pair_update(m, dom, pvh_ptr(f->mfn, k), pte(t->mfn, fl));
    }
    pvm_compare(m);
    return f;
}

static void pvm_step(struct pvm *m)
{
    struct th_rng *r = &m->rng;
    unsigned dom = (unsigned)th_rand_below(r, PVM_DOMS);
    mv_vcpu_t *v = m->v[dom];
    struct pvm_frame *f = &m->s.f[dom * PVM_FRAMES + th_rand_below(r, PVM_FRAMES)];
    uint64_t p = th_rand_below(r, 100);
    int want, got;
    unsigned level = 1 + (unsigned)th_rand_below(r, 4);
    struct pvm_frame *built = NULL;
    if (p >= 88) {
        /* Build a table of some level and pin it. */
        built = pvm_build(m, dom, level);
        if (built)
            f = built;
        p = 50;
    }
    struct pvm_state *c = malloc(sizeof(*c));
    assert_non_null(c);
    memcpy(c, &m->s, sizeof(*c));
    if (th_rand_below(r, 10) == 0)
        assert_int_equal(mv_pv_set_budget(m->d[dom], 1 + (uint32_t)th_rand_below(r, 600)), 0);
    else
        assert_int_equal(mv_pv_set_budget(m->d[dom], 0), 0);
    if (p < 50) {
        uint64_t ptr = pvh_ptr(f->mfn, (unsigned)th_rand_below(r, PVM_SLOTS));
        uint64_t q = th_rand_below(r, 200);
        if (q == 0)
            ptr += 4;
        else if (q == 1)
            ptr |= 1;
        else if (q == 2)
            ptr = pvh_ptr(m->s.f[((dom + 1) % PVM_DOMS) * PVM_FRAMES].mfn, 0);
        uint64_t val = pvm_value(m, dom, f->mfn);
        want = pvm_update(m, c, dom, ptr, val);
        got = pvm_engine_update(m, v, ptr, val);
    } else if (p < 68) {
        want = pvm_pin(m, c, dom, f->mfn, level);
        got = pvm_engine_op(m, v, MV_PV_PIN_L1_TABLE + level - 1, f->mfn);
    } else if (p < 80) {
        want = pvm_unpin(m, c, dom, f->mfn);
        got = pvm_engine_op(m, v, MV_PV_UNPIN_TABLE, f->mfn);
    } else {
        mv_mfn_t b = th_rand_below(r, 4) == 0 ? MV_INVALID_MFN : f->mfn;
        want = pvm_base(m, c, dom, b);
        got = pvm_engine_op(m, v, MV_PV_NEW_BASEPTR, b);
    }
    if (want != got)
        fail_msg("step: model %s, engine %s (p=%llu dom=%u frame=%#llx)",
                 mv_strerror_name(want), mv_strerror_name(got), (unsigned long long)p, dom,
                 (unsigned long long)f->mfn);
    if (!want) {
        memcpy(&m->s, c, sizeof(*c));
        m->ok++;
    } else {
        m->refused++;
    }
    free(c);
    pvm_compare(m);
}

static void pvm_run(uint64_t seed, uint64_t steps, uint64_t audit_every)
{
    struct th_platform *tp;
    struct pvm *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    m->h = th_host_create(16 * TH_MiB, NULL, &tp);
    m->rng.s = seed;
    const struct mv_topology *topo = mv_host_topology(m->h);
    m->end = topo->node[topo->nr_nodes - 1].first_mfn + topo->node[topo->nr_nodes - 1].nr_frames;
    m->index = malloc(m->end * sizeof(*m->index));
    assert_non_null(m->index);
    for (mv_mfn_t i = 0; i < m->end; i++)
        m->index[i] = -1;
    for (unsigned d = 0; d < PVM_DOMS; d++) {
        m->flags[d] = d == 1 ? 0 : MV_DOMF_LINEAR_PT;
        m->d[d] = pvh_domain(m->h, 10 + d, PVM_FRAMES, m->flags[d], 1);
        m->v[d] = mv_domain_vcpu(m->d[d], 0);
        m->s.kbase[d] = MV_INVALID_MFN;
        for (unsigned i = 0; i < PVM_FRAMES; i++) {
            struct pvm_frame *f = &m->s.f[d * PVM_FRAMES + i];
            f->mfn = pvh_frame(m->d[d]);
            f->dom = d;
            f->refs = 1;
            m->index[f->mfn] = (int32_t)(d * PVM_FRAMES + i);
        }
    }
    for (uint64_t i = 0; i < steps; i++) {
        pvm_step(m);
        if (audit_every && (i + 1) % audit_every == 0)
            th_assert_audit_clean(m->h);
    }
    th_assert_audit_clean(m->h);
    uint64_t tables = 0;
    for (unsigned d = 0; d < PVM_DOMS; d++) {
        struct mv_pv_stats st = pvh_stats(m->d[d]);
        tables += st.validations;
    }
    print_message("pv model seed %#llx: %llu steps, %llu applied, %llu refused, %llu preemptions, "
                  "%llu validations\n", (unsigned long long)seed, (unsigned long long)steps,
                  (unsigned long long)m->ok, (unsigned long long)m->refused,
                  (unsigned long long)m->preempted, (unsigned long long)tables);
    /* Some of everything happened. */
    assert_true(m->ok > steps / 10);
    assert_true(m->refused > steps / 10);
    for (unsigned d = 0; d < PVM_DOMS; d++)
        pvh_destroy(m->d[d]);
    th_host_destroy(m->h, tp);
    free(m->index);
    free(m);
}

#endif
