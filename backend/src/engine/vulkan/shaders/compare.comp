// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//
// COMPARE (spec §8.3) of one chunk: the first offset at which the bytes of
// buffer `a` and buffer `b` differ, or 0xffffffff if their first `len` bytes
// are alike. Each invocation compares `block` bytes (a multiple of 4) and
// lowers `first` to the first difference it finds (atomicMin), so the least
// offset of all wins whatever order the invocations run in.
//
// Built by build.sh into compare.spv (checked in).

#version 450

layout(local_size_x = 64) in;

layout(set = 0, binding = 0, std430) readonly buffer A { uint a[]; };
layout(set = 0, binding = 1, std430) readonly buffer B { uint b[]; };
layout(set = 0, binding = 2, std430) buffer Result { uint first; };

layout(push_constant) uniform Params {
    // Bytes to compare.
    uint len;
    // Bytes per invocation, a multiple of 4.
    uint block;
    uint unused0;
    uint unused1;
} p;

void main() {
    uint start = gl_GlobalInvocationID.x * p.block;
    if (start >= p.len) {
        return;
    }
    // An earlier difference is known already (an atomic read: the minimum
    // with the largest value changes nothing): nothing here can be lower.
    if (atomicMin(first, 0xffffffffu) < start) {
        return;
    }
    uint end = min(start + p.block, p.len);
    for (uint at = start; at < end; at += 4u) {
        uint x = a[at >> 2] ^ b[at >> 2];
        uint left = end - at;
        if (left < 4u) {
            // The bytes past the end are not the job's.
            x &= (1u << (8u * left)) - 1u;
        }
        if (x != 0u) {
            // Bytes are little-endian in a word: the lowest differing bit
            // is in the first differing byte.
            atomicMin(first, at + uint(findLSB(x)) / 8u);
            return;
        }
    }
}
