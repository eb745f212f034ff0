/*
 * memvirt/pv.h - PV page-table validation (filled in by the PV module).
 */
#ifndef MEMVIRT_PV_H
#define MEMVIRT_PV_H

#include <memvirt/mm.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif
#endif
