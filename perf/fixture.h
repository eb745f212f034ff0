/*
 * perf/fixture.h - what the module benchmarks share around the engine: tearing a
 * benchmark's host down with the checks every run ends with.
 */
#ifndef MVB_FIXTURE_H
#define MVB_FIXTURE_H

#include <stddef.h>

#include <memvirt/memvirt.h>

/*
 * Destroy the domains (NULL entries skipped; preempted destroys continued), audit the host
 * and destroy it. A failed destroy or a violation is reported against `bench`
 * (mvb_report_failure: memvirt-bench then exits non-zero). Safe with h == NULL.
 */
void mvb_fixture_teardown(const char *bench, mv_host_t *h, mv_domain_t *const *doms, size_t n);

#endif
