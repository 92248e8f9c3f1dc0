/* Rockchip's real rkllm.h (a C++ header: from the board, or RKLLM_HEADER) under the same layout table
 * as the stand-in, so the binding's struct sizes and offsets are checked against the header itself. */
#include <cstddef> /* the header uses size_t without including it */

#include "rkllm.h"

extern "C" {
#include "rkllm_abi.h"
}
