/*
 * tests/shadow_helpers.h - what the shadow suites beyond test_shadow share: a shadow domain
 * with RAM at gfns [0, n), guest entries, a walker over the shadow tables (what the hardware
 * would do with a root), an oracle that walks the guest's own tables through the p2m (what
 * x86 says the guest's tables mean) and the checks that the two agree.
 *
 * The oracle is deliberately separate from shadow/walk.c: its reserved-bit rules are written
 * out again from the SDM (vol. 3, 4.5), and it never sets accessed or dirty bits. A table
 * gfn that is not RAM reads as all ones, as on a bus with nothing behind the address, which
 * is a reserved-bit fault (the engine's documented choice, shadow/walk.c).
 */
#ifndef MV_TEST_SHADOW_HELPERS_H
#define MV_TEST_SHADOW_HELPERS_H

#include <string.h>

#include "harness.h"
#include "shadow-internal.h"

#define PTE_P 0x1ull
#define PTE_W 0x2ull
#define PTE_U 0x4ull
#define PTE_A 0x20ull
#define PTE_D 0x40ull
#define PTE_PS 0x80ull
#define PTE_NX (1ull << 63)
#define PTE_ADDR 0x000ffffffffff000ull

/* A canonical address from the four table indices (a recursive mapping needs bit 47). */
static inline uint64_t shd_va(unsigned i4, unsigned i3, unsigned i2, unsigned i1)
{
    uint64_t va = (uint64_t)i4 << 39 | (uint64_t)i3 << 30 | (uint64_t)i2 << 21 |
                  (uint64_t)i1 << 12;
    if (va & (1ull << 47))
        va |= 0xffff000000000000ull;
    return va;
}

/*
 * A shadow domain: `ram` gfns from 0 populated (a multiple of 512), room for `extra` more,
 * a pool of `pool` frames (0: the default), a physical-address width (0: 40).
 */
static inline mv_domain_t *shd_domain(mv_host_t *h, uint32_t id, uint32_t nr_vcpus,
                                      uint64_t pool, uint64_t ram, uint64_t extra,
                                      uint32_t phys_bits)
{
    struct mv_domain_config c = {.size = sizeof(c), .domid = id, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_SHADOW, .nr_vcpus = nr_vcpus,
                                 .max_pages = ram + extra, .node_affinity = MV_NODE_ANY,
                                 .phys_bits = phys_bits, .shadow_pool_pages = pool,
                                 .shadow_pool_max_pages = pool};
    mv_domain_t *d;
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    for (mv_gfn_t g = 0; g < ram; g += 512) {
        uint64_t done;
        int rc;
        do
            rc = mv_populate_physmap(d, &g, 1, 9, MV_NODE_ANY, &done);
        while (rc == MV_EAGAIN);
        assert_int_equal(rc, 0);
    }
    return d;
}

static inline void shd_kill(mv_host_t *h, mv_domain_t *d)
{
    th_assert_audit_clean(h);
    int rc;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
    th_assert_audit_clean(h);
}

static inline void shd_populate(mv_domain_t *d, mv_gfn_t g)
{
    uint64_t done;
    assert_int_equal(mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done), 0);
}

static inline void shd_decrease(mv_domain_t *d, mv_gfn_t g)
{
    uint64_t done;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), 0);
}

/* A guest entry written before any shadow of its table exists (no trap to go through). */
static inline void gpoke(mv_domain_t *d, mv_gfn_t table, unsigned idx, uint64_t e)
{
    assert_int_equal(mv_guest_phys_write(d, (table << 12) + 8 * idx, &e, 8), 0);
}

static inline uint64_t gget(mv_domain_t *d, mv_gfn_t table, unsigned idx)
{
    uint64_t e;
    assert_int_equal(mv_guest_phys_read(d, (table << 12) + 8 * idx, &e, 8), 0);
    return e;
}

/* A guest entry written the way a shadowed guest writes it: trapped and emulated. */
static inline void emw(mv_vcpu_t *v, mv_gfn_t table, unsigned idx, uint64_t e)
{
    assert_int_equal(mv_shadow_emulate_write(v, (table << 12) + 8 * idx, &e, 8), 0);
}

static inline struct mv_p2m_entry shd_p2m(mv_domain_t *d, mv_gfn_t gfn)
{
    struct mv_p2m_entry e;
    assert_int_equal(mv_p2m_lookup(d, gfn, &e), 0);
    return e;
}

static inline mv_mfn_t shd_mfn(mv_domain_t *d, mv_gfn_t gfn)
{
    struct mv_p2m_entry e = shd_p2m(d, gfn);
    assert_true(p2m_is_ram(e.type));
    return e.mfn;
}

static inline struct mv_shadow_stats shd_stats(mv_domain_t *d)
{
    struct mv_shadow_stats st;
    memset(&st, 0, sizeof(st));
    st.size = sizeof(st);
    assert_int_equal(mv_shadow_stats(d, &st), 0);
    return st;
}

static inline struct mv_vcpu_state shd_state(mv_vcpu_t *v)
{
    struct mv_vcpu_state st;
    memset(&st, 0, sizeof(st));
    st.size = sizeof(st);
    assert_int_equal(mv_vcpu_get_state(v, &st), 0);
    return st;
}

/* EFER.NXE and the 1 GiB-pages flag of a vCPU. */
static inline void shd_mode(mv_vcpu_t *v, bool nxe, bool gb)
{
    struct mv_vcpu_state st = shd_state(v);
    st.efer = nxe ? st.efer | MV_EFER_NXE : st.efer & ~MV_EFER_NXE;
    st.flags = gb ? MV_VCPUF_GBPAGES : 0;
    assert_int_equal(mv_vcpu_set_state(v, &st), 0);
}

static inline uint32_t shd_fault(mv_vcpu_t *v, uint64_t va, uint32_t ec, uint32_t *code,
                                 mv_paddr_t *gpa)
{
    struct mv_shadow_outcome o;
    assert_int_equal(mv_shadow_page_fault(v, va, ec, 0, &o), 0);
    if (code)
        *code = o.error_code;
    if (gpa)
        *gpa = o.gpa;
    return o.kind;
}

static inline mv_paddr_t shd_cr3(mv_vcpu_t *v, mv_gfn_t l4)
{
    mv_paddr_t root;
    assert_int_equal(mv_shadow_set_cr3(v, l4 << 12, &root), 0);
    return root;
}

/* ---- The hardware's view: a walk over the shadow tables -------------------------------- */

struct sw {
    bool present;
    mv_mfn_t mfn;
    bool w, u, nx;
    uint64_t bits; /* every entry of the path ORed */
};

static inline struct sw swalk(mv_host_t *h, mv_paddr_t root, uint64_t va)
{
    struct sw r = {.w = true, .u = true};
    uint64_t t = root;
    for (int lv = 3; lv >= 0; lv--) {
        const uint64_t *tab = mv_frame_va(h, t >> 12);
        assert_non_null(tab);
        uint64_t e = __atomic_load_n(&tab[(va >> (12 + 9 * lv)) & 511], __ATOMIC_ACQUIRE);
        if (!(e & PTE_P))
            return (struct sw){0};
        assert_false(lv > 0 && (e & PTE_PS)); /* shadows use 4 KiB leaves only */
        r.w &= (e & PTE_W) != 0;
        r.u &= (e & PTE_U) != 0;
        r.nx |= (e & PTE_NX) != 0;
        r.bits |= e;
        t = e & PTE_ADDR;
    }
    r.present = true;
    r.mfn = t >> 12;
    return r;
}

/* ---- The guest's view: the oracle --------------------------------------------------------- */

struct gw {
    bool ok;          /* a translation; else the guest faults with pfec */
    uint32_t pfec;
    mv_gfn_t gfn;
    bool w, u, nx;
    bool dirty;       /* the leaf's D bit */
};

static inline struct gw gwalk(mv_domain_t *d, uint64_t cr3, uint64_t va, uint32_t ec,
                              const struct mv_vcpu_state *st)
{
    unsigned pbits = d->phys_bits;
    bool nxe = (st->efer & MV_EFER_NXE) != 0, gb = (st->flags & MV_VCPUF_GBPAGES) != 0;
    uint64_t beyond = ((1ull << 52) - 1) & ~((1ull << pbits) - 1);
    uint32_t acc = ec & (MV_PFEC_W | MV_PFEC_U);
    if ((ec & MV_PFEC_ID) && (nxe || (st->cr4 & MV_CR4_SMEP)))
        acc |= MV_PFEC_ID;
    struct gw r = {.w = true, .u = true};
    mv_gfn_t t = (cr3 & PTE_ADDR) >> 12;
    for (int lv = 3; lv >= 0; lv--) {
        struct mv_p2m_entry pe;
        uint64_t e;
        if (mv_p2m_lookup(d, t, &pe) || !p2m_is_ram(pe.type)) {
            r.pfec = MV_PFEC_P | MV_PFEC_RSVD | acc; /* all ones: present, reserved */
            return r;
        }
        assert_int_equal(mv_guest_phys_read(d, (t << 12) + 8 * ((va >> (12 + 9 * lv)) & 511),
                                            &e, 8), 0);
        if (!(e & PTE_P)) {
            r.pfec = acc;
            return r;
        }
        uint64_t rsvd = beyond | (nxe ? 0 : PTE_NX);
        bool ps = (e & PTE_PS) != 0, bad = false;
        if (lv == 3 && ps)
            bad = true;
        if (lv == 2 && ps && !gb)
            bad = true;
        if (lv == 2 && ps)
            rsvd |= ((1ull << 30) - 1) & ~((1ull << 13) - 1);
        if (lv == 1 && ps)
            rsvd |= ((1ull << 21) - 1) & ~((1ull << 13) - 1);
        if (bad || (e & rsvd)) {
            r.pfec = MV_PFEC_P | MV_PFEC_RSVD | acc;
            return r;
        }
        r.w &= (e & PTE_W) != 0;
        r.u &= (e & PTE_U) != 0;
        r.nx |= nxe && (e & PTE_NX);
        if (lv == 0 || (lv <= 2 && ps)) {
            uint64_t span = 1ull << (9 * lv);
            r.gfn = (((e & PTE_ADDR) >> 12) & ~(span - 1)) | ((va >> 12) & (span - 1));
            r.dirty = (e & PTE_D) != 0;
            r.ok = true;
            return r;
        }
        t = (e & PTE_ADDR) >> 12;
    }
    return r;
}

/*
 * I12 as the hardware sees it: when the shadow root translates va, the guest's tables
 * translate it too, to the frame the p2m gives, and the shadow grants no more than the
 * guest entries and the p2m type: writable only onto a dirty ram_rw page (or mmio) that is
 * no guest page table. Returns whether the shadow translates va.
 */
static inline bool shd_agrees(mv_host_t *h, mv_domain_t *d, mv_paddr_t root, uint64_t cr3,
                              uint64_t va, const struct mv_vcpu_state *st)
{
    struct sw s = swalk(h, root, va);
    if (!s.present)
        return false;
    struct gw g = gwalk(d, cr3, va, 0, st);
    if (!g.ok)
        fail_msg("va %#llx: shadow maps mfn %#llx, the guest's tables fault (pfec %#x)",
                 (unsigned long long)va, (unsigned long long)s.mfn, g.pfec);
    struct mv_p2m_entry pe = shd_p2m(d, g.gfn);
    if (s.mfn != pe.mfn)
        fail_msg("va %#llx: shadow maps mfn %#llx, the guest gfn %#llx is mfn %#llx",
                 (unsigned long long)va, (unsigned long long)s.mfn,
                 (unsigned long long)g.gfn, (unsigned long long)pe.mfn);
    if (s.u)
        assert_true(g.u);
    if (g.nx)
        assert_true(s.nx);
    if (s.w) {
        assert_true(g.w);
        if (pe.type != MV_P2M_MMIO_DIRECT) {
            assert_int_equal(pe.type, MV_P2M_RAM_RW);
            assert_true(g.dirty);
            assert_false(mv__sh_gfn_protected(sh_of(d), g.gfn)); /* unless out of sync */
        }
    }
    return true;
}

/* The gfn of domain d that maps machine frame m (by its m2p word, checked against the p2m),
 * or MV_INVALID_GFN. */
static inline mv_gfn_t shd_gfn_of(mv_host_t *h, mv_domain_t *d, mv_mfn_t m)
{
    struct mv_page_info pi = {.size = sizeof(pi)};
    struct mv_p2m_entry pe;
    if (mv_page_info(h, m, &pi) || pi.owner != mv_domain_id(d) || pi.gfn == MV_INVALID_GFN ||
        mv_p2m_lookup(d, pi.gfn, &pe) || pe.mfn != m)
        return MV_INVALID_GFN;
    return pi.gfn;
}

static inline uint64_t shd_agree_below(mv_host_t *h, mv_domain_t *d, mv_paddr_t root,
                                       uint64_t cr3, const struct mv_vcpu_state *st,
                                       mv_mfn_t table, int lv, uint64_t va)
{
    const uint64_t *t = mv_frame_va(h, table);
    assert_non_null(t);
    uint64_t n = 0;
    for (unsigned i = 0; i < 512; i++) {
        uint64_t e = __atomic_load_n(&t[i], __ATOMIC_ACQUIRE);
        if (!(e & PTE_P))
            continue;
        uint64_t a = va | (uint64_t)i << (12 + 9 * lv);
        if (a & (1ull << 47))
            a |= 0xffff000000000000ull;
        if (lv > 0)
            n += shd_agree_below(h, d, root, cr3, st, (e & PTE_ADDR) >> 12, lv - 1, a);
        else
            n += shd_agrees(h, d, root, cr3, a, st);
    }
    return n;
}

/*
 * Every translation the shadow root holds, each checked with shd_agrees (right after a
 * resync point: a CR3 load or a flush of the vCPU); the count.
 */
static inline uint64_t shd_all_agree(mv_host_t *h, mv_domain_t *d, mv_paddr_t root,
                                     uint64_t cr3, const struct mv_vcpu_state *st)
{
    return shd_agree_below(h, d, root, cr3, st, root >> 12, 3, 0);
}

/* No leaf of any shadow lets the guest write a frame whose writes must trap (a guest page
 * table in sync), or RAM that is not the domain's. The count of writable leaves. */
static inline uint64_t shd_no_writable_table(mv_host_t *h, mv_domain_t *d)
{
    struct sh_domain *s = sh_of(d);
    uint64_t n = 0;
    for (uint32_t pi = 0; pi < s->cap; pi++) {
        struct sh_page *sp = &s->pages[pi];
        if (sp->state != SLOT_USED || !sh_type_leafy(sp->type))
            continue;
        const uint64_t *t = sh_table(s, sp);
        for (unsigned i = 0; i < 512; i++) {
            uint64_t e = t[i];
            if (!(e & PTE_P) || !(e & PTE_W))
                continue;
            mv_mfn_t m = (e & PTE_ADDR) >> 12;
            if (!mv_frame_va(h, m))
                continue; /* beyond machine memory: an mmio range passed through */
            mv_gfn_t g = shd_gfn_of(h, d, m);
            if (g == MV_INVALID_GFN || mv__sh_gfn_protected(s, g))
                fail_msg("shadow %u (type %u, gfn %#llx) entry %u: writable onto gfn %#llx",
                         pi, sp->type, (unsigned long long)sp->gfn, i, (unsigned long long)g);
            n++;
        }
    }
    return n;
}

/*
 * The full contract for a read of va: the fault handler's outcome is the one the guest's
 * tables call for (INJECT with their error code, MMIO for a gfn with no RAM, otherwise
 * FIXED), and after FIXED the shadow translates va and agrees.
 */
static inline void shd_exact(mv_host_t *h, mv_vcpu_t *v, mv_paddr_t root, uint64_t cr3,
                             uint64_t va)
{
    mv_domain_t *d = mv_vcpu_domain(v);
    struct mv_vcpu_state st = shd_state(v);
    struct gw g = gwalk(d, cr3, va, 0, &st);
    uint32_t code;
    mv_paddr_t gpa;
    uint32_t kind = shd_fault(v, va, 0, &code, &gpa);
    if (!g.ok) {
        assert_int_equal(kind, MV_SHADOW_INJECT);
        assert_int_equal(code, g.pfec);
        assert_false(swalk(h, root, va).present);
        return;
    }
    struct mv_p2m_entry pe = shd_p2m(d, g.gfn);
    if (!p2m_is_ram(pe.type) && pe.type != MV_P2M_MMIO_DIRECT) {
        assert_int_equal(kind, MV_SHADOW_MMIO);
        assert_int_equal(gpa, (g.gfn << 12) | (va & 0xfff));
        assert_false(swalk(h, root, va).present);
        return;
    }
    assert_int_equal(kind, MV_SHADOW_FIXED);
    /* The walk just set A bits: read the state again for the comparison. */
    assert_true(shd_agrees(h, d, root, cr3, va, &st));
}

#endif
