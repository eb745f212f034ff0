/*
 * tests/test_p2m.c - the P2M: lookups, set_entry, superpages and splinters, type ranges,
 * reservation ops and their hostile inputs, mmio and special pages, listeners, resident
 * memory after a decrease, destroy, and a differential test against a plain model.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "p2m-internal.h"
#include "p2m_model.h"

static mv_host_t *h;
static struct th_platform *tp;

static mv_domain_t *make_dom(uint32_t id, uint32_t type, uint64_t max_pages)
{
    struct mv_domain_config c = {.size = sizeof(c), .domid = id, .type = type,
                                 .paging = type == MV_DOMAIN_PV ? MV_PAGING_PV : MV_PAGING_HAP,
                                 .nr_vcpus = 2, .max_pages = max_pages,
                                 .node_affinity = MV_NODE_ANY};
    mv_domain_t *d;
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    return d;
}

static void kill_dom(mv_domain_t *d)
{
    int rc;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
}

static int setup(void **state)
{
    (void)state;
    h = th_host_create(2 * TH_GiB + 64 * TH_MiB, NULL, &tp);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    th_host_destroy(h, tp);
    return 0;
}

static struct mv_p2m_entry look(mv_domain_t *d, mv_gfn_t gfn)
{
    struct mv_p2m_entry e;
    assert_int_equal(mv_p2m_lookup(d, gfn, &e), 0);
    return e;
}

static int populate1(mv_domain_t *d, mv_gfn_t gfn, unsigned order)
{
    uint64_t done = 99;
    int rc;
    do
        rc = mv_populate_physmap(d, &gfn, 1, order, MV_NODE_ANY, &done);
    while (rc == MV_EAGAIN);
    return rc;
}

static int decrease1(mv_domain_t *d, mv_gfn_t gfn, unsigned order)
{
    uint64_t done = 99;
    return mv_decrease_reservation(d, &gfn, 1, order, &done);
}

static struct mv_p2m_stats pstats(mv_domain_t *d)
{
    struct mv_p2m_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_p2m_stats(d, &st), 0);
    return st;
}

static struct mv_host_stats hstats(void)
{
    struct mv_host_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_host_drain(h), 0);
    assert_int_equal(mv_host_stats(h, &st), 0);
    return st;
}

static void test_populate_and_lookup(void **state)
{
    (void)state;
    struct mv_host_stats before = hstats();
    mv_domain_t *d = make_dom(1, MV_DOMAIN_HVM, 1u << 19);
    struct mv_p2m_entry e = look(d, 5);
    assert_int_equal(e.type, MV_P2M_INVALID);
    assert_int_equal(mv_p2m_lookup(d, 1ull << 28, &e), MV_ERANGE); /* 40-bit guest */
    assert_true(mv_p2m_root(d) != 0);

    assert_int_equal(populate1(d, 5, 0), 0);
    assert_int_equal(populate1(d, 512, 9), 0);
    assert_int_equal(populate1(d, 1ull << 18, 18), 0);
    e = look(d, 5);
    assert_int_equal(e.type, MV_P2M_RAM_RW);
    assert_int_equal(e.order, 0);
    assert_int_equal(e.access, MV_P2M_RWX);
    assert_int_equal(e.mtype, MV_P2M_MT_WB);
    struct mv_page_info pi = {.size = sizeof(pi)};
    assert_int_equal(mv_page_info(h, e.mfn, &pi), 0);
    assert_int_equal(pi.owner, 1);
    assert_int_equal(pi.gfn, 5);
    assert_int_equal(pi.refs, 1);
    /* Superpages: frames contiguous and aligned, each 4 KiB gfn inside. */
    struct mv_p2m_entry a = look(d, 512), b = look(d, 512 + 300);
    assert_int_equal(a.order, 9);
    assert_int_equal(a.mfn & 511, 0);
    assert_int_equal(b.mfn, a.mfn + 300);
    struct mv_p2m_entry g = look(d, (1ull << 18) + 12345);
    assert_int_equal(g.order, 18);
    assert_int_equal(mv_page_info(h, g.mfn, &pi), 0);
    assert_int_equal(pi.gfn, (1ull << 18) + 12345);
    struct mv_p2m_stats st = pstats(d);
    assert_int_equal(st.pages_by_order[0], 1);
    assert_int_equal(st.pages_by_order[1], 1);
    assert_int_equal(st.pages_by_order[2], 1);
    assert_int_equal(st.pages_by_type[MV_P2M_RAM_RW], 1 + 512 + (1u << 18));
    struct mv_domain_stats ds = {.size = sizeof(ds)};
    assert_int_equal(mv_domain_stats(d, &ds), 0);
    assert_int_equal(ds.pages, 1 + 512 + (1u << 18));
    assert_true(ds.overhead_pages >= st.table_frames); /* tables plus unused topup frames */
    assert_true(st.bytes_per_gib > 0);
    /* The batched lookup answers as the single one does, holes and superpages included. */
    struct th_rng rng = {.s = 77};
    mv_gfn_t many[100];
    struct mv_p2m_entry outs[100];
    for (int i = 0; i < 100; i++)
        many[i] = i % 3 == 0 ? th_rand_below(&rng, 1024) : (1ull << 18) + th_rand_below(&rng, 1u << 18);
    assert_int_equal(mv_p2m_lookup_many(d, many, 100, outs), 0);
    for (int i = 0; i < 100; i++) {
        struct mv_p2m_entry one = look(d, many[i]);
        assert_memory_equal(&one, &outs[i], sizeof(one));
    }
    many[50] = 1ull << 28;
    assert_int_equal(mv_p2m_lookup_many(d, many, 100, outs), MV_ERANGE);
    assert_int_equal(mv_p2m_lookup_many(d, NULL, 3, outs), MV_EINVAL);
    /* Populated memory reads zero. */
    const uint64_t *p = mv_frame_va(h, b.mfn);
    for (unsigned i = 0; i < MV_PAGE_SIZE / 8; i++)
        assert_int_equal(p[i], 0);
    th_assert_audit_clean(h);
    kill_dom(d);
    th_assert_audit_clean(h);
    /* Destroy returned every guest frame and every table frame. */
    struct mv_host_stats after = hstats();
    assert_int_equal(after.free_frames, before.free_frames);
    assert_int_equal(after.overhead_bytes, before.overhead_bytes);
}

static void test_reservation_bad_input(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(2, MV_DOMAIN_HVM, 1024);
    mv_gfn_t gfns[4] = {0, 512, 1024, 1536};
    uint64_t done = 7;
    /* XSA-31: order too large; XSA-212: count << order overflows; XSA-231: bad node. */
    assert_int_equal(mv_populate_physmap(d, gfns, 1, 19, MV_NODE_ANY, &done), MV_EINVAL);
    assert_int_equal(done, 0);
    assert_int_equal(mv_populate_physmap(d, gfns, UINT64_MAX / 2, 9, MV_NODE_ANY, &done),
                     MV_EOVERFLOW);
    assert_int_equal(mv_populate_physmap(d, gfns, 1, 0, 3, &done), MV_ENODEV);
    assert_int_equal(mv_populate_physmap(d, NULL, 1, 0, MV_NODE_ANY, &done), MV_EINVAL);
    assert_int_equal(mv_populate_physmap(d, gfns, 1, 0, MV_NODE_ANY, NULL), MV_EINVAL);
    /* XSA-388: misaligned superpage extent; beyond the width. */
    mv_gfn_t odd = 3;
    assert_int_equal(mv_populate_physmap(d, &odd, 1, 9, MV_NODE_ANY, &done), MV_EINVAL);
    mv_gfn_t far = 1ull << 28;
    assert_int_equal(mv_populate_physmap(d, &far, 1, 0, MV_NODE_ANY, &done), MV_ERANGE);
    mv_gfn_t edge = (1ull << 28) - 256;
    assert_int_equal(mv_populate_physmap(d, &edge, 1, 9, MV_NODE_ANY, &done), MV_EINVAL);
    struct mv_domain_stats ds = {.size = sizeof(ds)};
    assert_int_equal(mv_domain_stats(d, &ds), 0);
    assert_int_equal(ds.pages, 0);

    /* Past the maximum: partial success, exact done. 1024 pages = two 2 MiB extents. */
    assert_int_equal(mv_populate_physmap(d, gfns, 4, 9, MV_NODE_ANY, &done), MV_ENOSPC);
    assert_int_equal(done, 2);
    assert_int_equal(look(d, 1024).type, MV_P2M_INVALID);
    /* Already backed. */
    assert_int_equal(mv_populate_physmap(d, gfns, 1, 0, MV_NODE_ANY, &done), MV_EEXIST);
    assert_int_equal(done, 0);

    /* Decrease: XSA-277 twice, a gfn with nothing behind it (XSA-430), bad orders. */
    mv_gfn_t g = 600;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), 0);
    assert_int_equal(done, 1);
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), MV_ENOENT);
    assert_int_equal(done, 0);
    g = 5000;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), MV_ENOENT);
    g = 512;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 9, &done), MV_ENOENT); /* 600 gone */
    assert_int_equal(look(d, 513).type, MV_P2M_RAM_RW); /* nothing of the extent changed */
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 19, &done), MV_EINVAL);
    assert_int_equal(mv_decrease_reservation(d, &g, UINT64_MAX, 18, &done), MV_EOVERFLOW);
    g = 1;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 1, &done), MV_EINVAL);

    /* XSA-252: a frame with an outside reference stays. */
    struct mv_p2m_entry e = look(d, 7);
    assert_int_equal(mv_page_get(d, e.mfn), 0);
    g = 7;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), MV_EBUSY);
    assert_int_equal(look(d, 7).mfn, e.mfn);
    assert_int_equal(mv_page_put(d, e.mfn), 0);
    /* A typed (PV-like) reference too. */
    assert_int_equal(mv_page_get_typed(d, e.mfn, MV_PGT_L1), MV_PAGE_VALIDATE);
    assert_int_equal(mv_page_validated(d, e.mfn), 0);
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), MV_EBUSY);
    assert_int_equal(mv_page_put_typed(d, e.mfn), 0);
    /* An extent where only a later frame is held: nothing of it goes. */
    g = 0;
    struct mv_p2m_entry last = look(d, 300);
    assert_int_equal(mv_page_get(d, last.mfn), 0);
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 9, &done), MV_EBUSY);
    for (mv_gfn_t x = 0; x < 512; x++)
        assert_int_equal(look(d, x).type, MV_P2M_RAM_RW);
    assert_int_equal(mv_page_put(d, last.mfn), 0);
    th_assert_audit_clean(h);

    /* Special pages and mmio are never ballooned (XSA-378, XSA-507). */
    assert_int_equal(mv_p2m_set_special(d, 8, 1), 0);
    assert_true(look(d, 8).special);
    g = 8;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), MV_EPERM);
    assert_int_equal(mv_p2m_set_special(d, 8, 0), 0);
    assert_int_equal(mv_p2m_set_special(d, 9000, 1), MV_ENOENT);
    assert_int_equal(mv_p2m_set_special(d, 8, 2), MV_EINVAL);
    mv_mfn_t dev = 1ull << 30; /* far above machine memory */
    assert_int_equal(mv_p2m_map_mmio(d, 4096, dev, 4, MV_P2M_MT_UC), 0);
    e = look(d, 4097);
    assert_int_equal(e.type, MV_P2M_MMIO_DIRECT);
    assert_int_equal(e.mfn, dev + 1);
    assert_int_equal(e.mtype, MV_P2M_MT_UC);
    assert_int_equal(e.access, MV_P2M_R | MV_P2M_W);
    g = 4096;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), MV_EPERM);
    /* mmio may not name RAM (another domain's memory), nor cover this domain's RAM. */
    assert_int_equal(mv_p2m_map_mmio(d, 4200, 0, 1, MV_P2M_MT_UC), MV_EPERM);
    assert_int_equal(mv_p2m_map_mmio(d, 0, dev, 1, MV_P2M_MT_UC), MV_EBUSY);
    assert_int_equal(mv_p2m_map_mmio(d, 4200, dev, 1, 3), MV_EINVAL);
    th_assert_audit_clean(h);

    /* A dying domain: everything refused (XSA-410). */
    mv_page_get(d, look(d, 20).mfn); /* keep it dying for a moment */
    int rc;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, MV_EBUSY);
    g = 2048;
    assert_int_equal(mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done), MV_ESRCH);
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), MV_ESRCH);
    assert_int_equal(mv_p2m_set_entry(d, 0, 0, 0, MV_P2M_INVALID, 0), MV_ESRCH);
    struct mv_page_info pi = {.size = sizeof(pi)};
    mv_mfn_t held = 0;
    for (mv_mfn_t m = 0; m < 16384 * 33; m++) {
        if (mv_page_info(h, m, &pi) == 0 && pi.owner == 2) {
            held = m;
            break;
        }
    }
    assert_int_equal(mv_page_put(d, held), 0);
    kill_dom(d);
    th_assert_audit_clean(h);
}

static void test_set_entry(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(3, MV_DOMAIN_HVM, 4096), *o = make_dom(4, MV_DOMAIN_HVM, 64);
    mv_mfn_t m, big, theirs;
    assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0, &m), 0);
    assert_int_equal(mv_domain_alloc_frames(d, 9, MV_NODE_ANY, 0, &big), 0);
    assert_int_equal(mv_domain_alloc_frames(o, 0, MV_NODE_ANY, 0, &theirs), 0);
    assert_int_equal(mv_p2m_set_entry(d, 10, m, 0, MV_P2M_RAM_RO, MV_P2M_RWX), 0);
    struct mv_p2m_entry e = look(d, 10);
    assert_int_equal(e.type, MV_P2M_RAM_RO);
    assert_int_equal(e.access, MV_P2M_R | MV_P2M_X); /* the type allows no more */
    /* The frame sits at one gfn only. */
    assert_int_equal(mv_p2m_set_entry(d, 11, m, 0, MV_P2M_RAM_RW, MV_P2M_RWX), MV_EBUSY);
    /* A mapped frame cannot be given back behind the p2m's back. */
    assert_int_equal(mv_domain_free_frames(d, m, 0), MV_EBUSY);
    assert_int_equal(mv_p2m_set_entry(d, 12, theirs, 0, MV_P2M_RAM_RW, MV_P2M_RWX), MV_EXDEV);
    assert_int_equal(mv_p2m_set_entry(d, 512, big + 1, 9, MV_P2M_RAM_RW, MV_P2M_RWX), MV_EINVAL);
    assert_int_equal(mv_p2m_set_entry(d, 513, big, 9, MV_P2M_RAM_RW, MV_P2M_RWX), MV_EINVAL);
    assert_int_equal(mv_p2m_set_entry(d, 512, big, 5, MV_P2M_RAM_RW, MV_P2M_RWX), MV_EINVAL);
    assert_int_equal(mv_p2m_set_entry(d, 1ull << 28, m, 0, MV_P2M_RAM_RW, 7), MV_ERANGE);
    assert_int_equal(mv_p2m_set_entry(d, 12, m, 0, MV_P2M_RAM_SHARED, 7), MV_EOPNOTSUPP);
    assert_int_equal(mv_p2m_set_entry(d, 12, m, 0, 31, 7), MV_EINVAL);
    assert_int_equal(mv_p2m_set_entry(d, 12, m, 0, MV_P2M_RAM_RW, 8), MV_EINVAL);
    /* A superpage, then a 4 KiB mapping inside it: splintered, neighbours kept. */
    assert_int_equal(mv_p2m_set_entry(d, 512, big, 9, MV_P2M_RAM_RW, MV_P2M_RWX), 0);
    assert_int_equal(look(d, 700).order, 9);
    uint64_t sp = pstats(d).splinters;
    assert_int_equal(mv_p2m_set_entry(d, 700, MV_INVALID_MFN, 0, MV_P2M_INVALID, 0), 0);
    assert_int_equal(pstats(d).splinters, sp + 1);
    assert_int_equal(look(d, 700).type, MV_P2M_INVALID);
    assert_int_equal(look(d, 701).mfn, big + 189);
    assert_int_equal(look(d, 701).order, 0);
    /* The unmapped frame is the domain's again, unmapped, and can go elsewhere. */
    struct mv_page_info pi = {.size = sizeof(pi)};
    assert_int_equal(mv_page_info(h, big + 188, &pi), 0);
    assert_int_equal(pi.gfn, MV_INVALID_GFN);
    assert_int_equal(pi.refs, 1);
    assert_int_equal(mv_p2m_set_entry(d, 20, big + 188, 0, MV_P2M_RAM_RW, MV_P2M_RWX), 0);
    th_assert_audit_clean(h);
    /* Remapping the superpage range in one go over the splintered table. */
    assert_int_equal(mv_p2m_set_entry(d, 20, MV_INVALID_MFN, 0, MV_P2M_INVALID, 0), 0);
    assert_int_equal(mv_p2m_set_entry(d, 512, big, 9, MV_P2M_RAM_RW, MV_P2M_RWX), 0);
    assert_int_equal(look(d, 700).order, 9);
    th_assert_audit_clean(h);
    /* Unmapped frames: dropped by the domain. */
    assert_int_equal(mv_p2m_set_entry(d, 10, MV_INVALID_MFN, 0, MV_P2M_INVALID, 0), 0);
    assert_int_equal(mv_domain_free_frames(d, m, 0), 0);
    kill_dom(d);
    kill_dom(o);
    th_assert_audit_clean(h);
}

/* A table allocation failing at each step of a splinter leaves the old mapping intact. */
static void test_splinter_allocation_failure(void **state)
{
    (void)state;
    if (!MV_HAVE_FAULT_INJECTION)
        return;
    mv_domain_t *d = make_dom(5, MV_DOMAIN_HVM, 1u << 19);
    assert_int_equal(populate1(d, 1ull << 18, 18), 0);
    mv_mfn_t base = look(d, 1ull << 18).mfn;
    int failures = 0;
    for (uint64_t skip = 0; skip < 8; skip++) {
        /* Empty the topup cache so the splinter must allocate its tables. */
        mv__p2m_topup_drain(p2m_of(d));
        mv_gfn_t g = (1ull << 18) + 1000 + skip * 4096;
        assert_int_equal(mv_host_inject_failure(h, "heap.alloc", skip, 1), 0);
        uint64_t done;
        int rc = mv_decrease_reservation(d, &g, 1, 0, &done);
        mv_host_inject_failure(h, "heap.alloc", 0, 0);
        if (rc == MV_ENOMEM) {
            failures++;
            struct mv_p2m_entry e = look(d, g);
            assert_int_equal(e.type, MV_P2M_RAM_RW);
            assert_int_equal(e.mfn, base + (g - (1ull << 18)));
        } else {
            assert_int_equal(rc, 0);
            assert_int_equal(look(d, g).type, MV_P2M_INVALID);
        }
        th_assert_audit_clean(h);
    }
    assert_true(failures >= 2);
    kill_dom(d);
}

static void test_change_type_range(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(6, MV_DOMAIN_HVM, 4096);
    mv_gfn_t g[2] = {0, 512};
    uint64_t done;
    assert_int_equal(mv_populate_physmap(d, g, 2, 9, MV_NODE_ANY, &done), 0);
    assert_int_equal(mv_p2m_change_type_range(d, 100, 600, MV_P2M_RAM_RW, MV_P2M_RAM_RO, &done),
                     0);
    assert_int_equal(done, 600);
    assert_int_equal(look(d, 99).type, MV_P2M_RAM_RW);
    assert_int_equal(look(d, 100).type, MV_P2M_RAM_RO);
    assert_int_equal(look(d, 100).access, MV_P2M_R | MV_P2M_X);
    assert_int_equal(look(d, 699).type, MV_P2M_RAM_RO);
    assert_int_equal(look(d, 700).type, MV_P2M_RAM_RW);
    struct mv_p2m_stats st = pstats(d);
    assert_int_equal(st.pages_by_type[MV_P2M_RAM_RO], 600);
    assert_int_equal(st.pages_by_type[MV_P2M_RAM_RW], 424);
    assert_int_equal(st.splinters, 2);
    /* Back again; bad requests. */
    assert_int_equal(mv_p2m_change_type_range(d, 0, 1024, MV_P2M_RAM_RO, MV_P2M_RAM_RW, &done), 0);
    assert_int_equal(pstats(d).pages_by_type[MV_P2M_RAM_RW], 1024);
    assert_int_equal(mv_p2m_change_type_range(d, 0, 4, MV_P2M_RAM_RW, MV_P2M_MMIO_DIRECT, &done),
                     MV_EINVAL);
    assert_int_equal(mv_p2m_change_type_range(d, 0, 4, MV_P2M_RAM_SHARED, MV_P2M_RAM_RW, &done),
                     MV_EINVAL);
    assert_int_equal(mv_p2m_change_type_range(d, (1ull << 28) - 2, 4, MV_P2M_RAM_RW,
                                              MV_P2M_RAM_RO, &done), MV_ERANGE);
    th_assert_audit_clean(h);
    kill_dom(d);
}

/* A listener sees every change exactly once, as a start/end pair around it. */
struct rec {
    int open;
    int pairs;
    int nested;
    mv_gfn_t first;
    uint64_t count;
    uint64_t seq_at_start;
};

static void rec_start(void *ctx, mv_domain_t *d, mv_gfn_t first, uint64_t count)
{
    struct rec *r = ctx;
    if (r->open)
        r->nested++;
    r->open = 1;
    r->first = first;
    r->count = count;
    r->seq_at_start = mv_p2m_seq(d);
    assert_true(mv_p2m_in_progress(d) >= 1);
}

static void rec_end(void *ctx, mv_domain_t *d, mv_gfn_t first, uint64_t count)
{
    struct rec *r = ctx;
    assert_true(r->open);
    assert_int_equal(first, r->first);
    assert_int_equal(count, r->count);
    assert_int_equal(mv_p2m_seq(d), r->seq_at_start + 1);
    r->open = 0;
    r->pairs++;
}

static void test_listener_pairs(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(7, MV_DOMAIN_HVM, 4096);
    struct rec r = {0};
    struct mv_p2m_listener l = {.ctx = &r, .invalidate_start = rec_start,
                                .invalidate_end = rec_end};
    assert_int_equal(mv_p2m_register_listener(d, &l), 0);
    uint64_t seq0 = mv_p2m_seq(d);
    assert_int_equal(populate1(d, 0, 9), 0);
    assert_int_equal(r.pairs, 1);
    assert_int_equal(r.first, 0);
    assert_int_equal(r.count, 512);
    assert_int_equal(decrease1(d, 7, 0), 0);
    assert_int_equal(r.pairs, 2);
    assert_int_equal(r.count, 1);
    uint64_t done;
    assert_int_equal(mv_p2m_change_type_range(d, 0, 512, MV_P2M_RAM_RW, MV_P2M_RAM_LOGDIRTY,
                                              &done), 0);
    assert_int_equal(r.pairs, 3); /* one notification for the whole range */
    assert_int_equal(r.count, 512);
    assert_int_equal(decrease1(d, 7, 0), MV_ENOENT); /* refused: no notification */
    assert_int_equal(r.pairs, 3);
    assert_int_equal(r.nested, 0);
    assert_int_equal(mv_p2m_seq(d), seq0 + 3);
    assert_int_equal(mv_p2m_in_progress(d), 0);
    assert_int_equal(mv_p2m_unregister_listener(d, &l), 0);
    assert_int_equal(mv_p2m_unregister_listener(d, &l), MV_ENOENT);
    struct mv_p2m_listener none = {0};
    assert_int_equal(mv_p2m_register_listener(d, &none), MV_EINVAL);
    for (int i = 0; i < MV_P2M_MAX_LISTENERS; i++)
        assert_int_equal(mv_p2m_register_listener(d, &l), 0);
    assert_int_equal(mv_p2m_register_listener(d, &l), MV_ENOSPC);
    for (int i = 0; i < MV_P2M_MAX_LISTENERS; i++)
        assert_int_equal(mv_p2m_unregister_listener(d, &l), 0);
    kill_dom(d);
}

/* Under HAP a decrease flushes guest-physical translations before it returns. */
static void test_hap_flush(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(8, MV_DOMAIN_HVM, 4096), *pv = make_dom(9, MV_DOMAIN_PV, 4096);
    assert_int_equal(populate1(d, 0, 0), 0);
    assert_int_equal(populate1(pv, 0, 0), 0);
    uint64_t f0 = atomic_load(&tp->flushes);
    assert_int_equal(decrease1(d, 0, 0), 0);
    assert_true(atomic_load(&tp->flushes) >= f0 + 1);
    uint64_t f1 = atomic_load(&tp->flushes);
    assert_int_equal(decrease1(pv, 0, 0), 0); /* no EPT behind a PV guest */
    assert_int_equal(atomic_load(&tp->flushes), f1);
    kill_dom(d);
    kill_dom(pv);
}

static void test_rss_drops_after_decrease(void **state)
{
    (void)state;
    mv_domain_t *d = make_dom(10, MV_DOMAIN_HVM, 1u << 17);
    mv_gfn_t g[128];
    for (int i = 0; i < 128; i++)
        g[i] = (mv_gfn_t)i * 512;
    uint64_t done, base = th_rss_bytes();
    assert_int_equal(mv_populate_physmap(d, g, 128, 9, MV_NODE_ANY, &done), 0);
    for (mv_gfn_t x = 0; x < 128 * 512; x++)
        memset(mv_frame_va(h, look(d, x).mfn), 0xab, MV_PAGE_SIZE);
    uint64_t full = th_rss_bytes();
    assert_true(full >= base + 200 * TH_MiB);
    int rc;
    uint64_t off = 0;
    while ((rc = mv_decrease_reservation(d, g + off, 128 - off, 9, &done)) == MV_EAGAIN)
        off += done;
    assert_int_equal(rc, 0);
    assert_int_equal(mv_host_trim(h), 0);
    uint64_t after = th_rss_bytes();
    assert_true(full - after >= 200 * TH_MiB);
    kill_dom(d);
}

/* ---- Differential test (tests/p2m_model.c) ------------------------------------------ */

static void test_differential(void **state)
{
    (void)state;
    p2m_run_differential(h, 0x70326d, 6000, 2000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_populate_and_lookup),
        cmocka_unit_test(test_reservation_bad_input),
        cmocka_unit_test(test_set_entry),
        cmocka_unit_test(test_splinter_allocation_failure),
        cmocka_unit_test(test_change_type_range),
        cmocka_unit_test(test_listener_pairs),
        cmocka_unit_test(test_hap_flush),
        cmocka_unit_test(test_rss_drops_after_decrease),
        cmocka_unit_test(test_differential),
    };
    return cmocka_run_group_tests_name("p2m", tests, setup, teardown);
}
