/*
 * perf/fixture.c - shared benchmark teardown (see fixture.h).
 */
#include "fixture.h"

#include "bench.h"

void mvb_fixture_teardown(const char *bench, mv_host_t *h, mv_domain_t *const *doms, size_t n)
{
    if (!h)
        return;
    for (size_t i = 0; i < n; i++) {
        if (!doms[i])
            continue;
        int rc;
        while ((rc = mv_domain_destroy(doms[i])) == MV_EAGAIN)
            ;
        if (rc)
            mvb_report_failure(bench, mv_strerror_name(rc));
    }
    if (mv_host_audit(h, NULL))
        mvb_report_failure(bench, "audit not clean");
    mv_host_destroy(h);
}
