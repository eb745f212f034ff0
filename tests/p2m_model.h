/* tests/p2m_model.h - the p2m differential test (tests/p2m_model.c). */
#ifndef MV_TEST_P2M_MODEL_H
#define MV_TEST_P2M_MODEL_H

#include <memvirt/memvirt.h>

void p2m_run_differential(mv_host_t *h, uint64_t seed, uint64_t steps, uint64_t audit_every);

#endif
