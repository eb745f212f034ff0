/*
 * lib/modules.c - the library's assembly: which engine modules a host carries.
 *
 * Every module with per-domain state (p2m, PV validation, shadow, sharing, balloon)
 * exports one `struct mv_module_ops` (mm/mm-internal.h); this table, copied into each host
 * at creation, is the only place that names them all. It sits outside the engine folders
 * so that mm/ never includes a module above it: mm calls modules only through these hooks.
 */
#include "mm-internal.h"

extern const struct mv_module_ops mv__pv_module; /* pv/module.c */

extern const struct mv_module_ops mv__p2m_module;
extern const struct mv_module_ops mv__shadow_module; /* shadow/shadow.c */

const struct mv_module_ops *const mv__module_table[MV_MOD_NR] = {
    [MV_MOD_P2M] = &mv__p2m_module,
    [MV_MOD_PV] = &mv__pv_module,
    [MV_MOD_SHADOW] = &mv__shadow_module,
    [MV_MOD_SHARING] = NULL,
    [MV_MOD_BALLOON] = NULL,
};
