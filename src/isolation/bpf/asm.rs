//! A tiny eBPF assembler: the few instructions the sock_addr programs need,
//! each a named helper, plus forward labels so that a program reads as a
//! list of steps instead of hand-counted jump offsets.
//!
//! Encoding: `struct bpf_insn` in linux/bpf.h — opcode byte, dst register
//! (low nibble) and src register (high nibble), signed 16-bit offset,
//! signed 32-bit immediate, little-endian on the machines we run on
//! (Documentation/bpf/standardization/instruction-set.rst).

/// One 8-byte eBPF instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The bytes the kernel reads (`struct bpf_insn`, host byte order).
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }
}

// Instruction classes (the low three bits of the opcode).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU64: u8 = 0x07;
// Sizes of loads and stores.
const W: u8 = 0x00;
const H: u8 = 0x08;
const DW: u8 = 0x18;
// Modes: 64-bit immediate (two slots), memory (ctx/stack with an offset).
const IMM: u8 = 0x00;
const MEM: u8 = 0x60;
// Operand source: immediate (K) or register (X).
const K: u8 = 0x00;
const X: u8 = 0x08;
// ALU operations.
const ADD: u8 = 0x00;
const MOV: u8 = 0xb0;
// Jump operations.
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;

/// Registers: r0 return value, r1-r5 helper arguments (clobbered by calls),
/// r6-r9 callee-saved, r10 the read-only frame pointer.
pub type Reg = u8;
pub const R0: Reg = 0;
pub const R1: Reg = 1;
pub const R2: Reg = 2;
pub const R3: Reg = 3;
pub const R4: Reg = 4;
pub const R5: Reg = 5;
pub const R6: Reg = 6;
pub const R7: Reg = 7;
pub const R8: Reg = 8;
pub const R10: Reg = 10;

/// src_reg of a 64-bit immediate load whose imm is a map fd: the verifier
/// replaces it with the map's address (linux/bpf.h BPF_PSEUDO_MAP_FD).
const PSEUDO_MAP_FD: u8 = 1;

/// A jump target not yet placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Builds a program; jumps to labels are resolved by [`Asm::finish`].
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    fn push(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> &mut Asm {
        self.insns.push(Insn {
            code,
            dst,
            src,
            off,
            imm,
        });
        self
    }

    /// A label to jump to; place it with [`Asm::here`].
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `l` at the next instruction.
    pub fn here(&mut self, l: Label) -> &mut Asm {
        assert!(self.labels[l.0].is_none(), "label placed twice");
        self.labels[l.0] = Some(self.insns.len());
        self
    }

    /// Whether a jump to `l` was emitted (an unreachable instruction makes
    /// the verifier refuse the whole program).
    pub fn used(&self, l: Label) -> bool {
        self.fixups.iter().any(|(_, f)| *f == l)
    }

    /// `dst = &map` of the map behind `fd` (BPF_LD_MAP_FD: two slots, the
    /// second holds the upper 32 bits of the immediate, here 0).
    pub fn ld_map_fd(&mut self, dst: Reg, fd: i32) -> &mut Asm {
        self.push(LD | IMM | DW, dst, PSEUDO_MAP_FD, 0, fd)
            .push(0, 0, 0, 0, 0)
    }

    /// `dst = src` (64-bit).
    pub fn mov64_reg(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ALU64 | MOV | X, dst, src, 0, 0)
    }

    /// `dst = imm`, sign-extended to 64 bits.
    pub fn mov64_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ALU64 | MOV | K, dst, 0, 0, imm)
    }

    /// `wdst = imm`: the low 32 bits, the upper ones zeroed.
    pub fn mov32_imm(&mut self, dst: Reg, imm: u32) -> &mut Asm {
        self.push(ALU | MOV | K, dst, 0, 0, imm as i32)
    }

    /// `dst += imm` (64-bit).
    pub fn add64_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ALU64 | ADD | K, dst, 0, 0, imm)
    }

    /// `dst = *(u32 *)(src + off)`, zero-extended.
    pub fn ldx_w(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.push(LDX | MEM | W, dst, src, off, 0)
    }

    /// `*(u32 *)(dst + off) = src`. Stores into the context must come from a
    /// register: the verifier refuses BPF_ST (immediate) stores to ctx.
    pub fn stx_w(&mut self, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.push(STX | MEM | W, dst, src, off, 0)
    }

    /// `*(u64 *)(dst + off) = src`.
    pub fn stx_dw(&mut self, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.push(STX | MEM | DW, dst, src, off, 0)
    }

    /// `*(u16 *)(dst + off) = imm` (stack only).
    pub fn st_h(&mut self, dst: Reg, off: i16, imm: i32) -> &mut Asm {
        self.push(ST | MEM | H, dst, 0, off, imm)
    }

    /// `*(u32 *)(dst + off) = imm` (stack only).
    pub fn st_w(&mut self, dst: Reg, off: i16, imm: u32) -> &mut Asm {
        self.push(ST | MEM | W, dst, 0, off, imm as i32)
    }

    /// `if (u32)dst == imm goto l`. The 32-bit compare (JMP32, Linux 5.1)
    /// matters: a 64-bit compare would sign-extend an address word whose
    /// top bit is set (10.0.0.200 is 0xc800000a) and never match.
    pub fn jeq32_imm(&mut self, dst: Reg, imm: u32, l: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), l));
        self.push(JMP32 | JEQ | K, dst, 0, 0, imm as i32)
    }

    /// `if dst == imm goto l` (64-bit: how a pointer that may be NULL is
    /// tested).
    pub fn jeq64_imm(&mut self, dst: Reg, imm: i32, l: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), l));
        self.push(JMP | JEQ | K, dst, 0, 0, imm)
    }

    /// `if dst != imm goto l` (64-bit).
    pub fn jne64_imm(&mut self, dst: Reg, imm: i32, l: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), l));
        self.push(JMP | JNE | K, dst, 0, 0, imm)
    }

    /// `if (u32)dst != (u32)src goto l`.
    pub fn jne32_reg(&mut self, dst: Reg, src: Reg, l: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), l));
        self.push(JMP32 | JNE | X, dst, src, 0, 0)
    }

    /// `if (u32)dst != imm goto l`.
    pub fn jne32_imm(&mut self, dst: Reg, imm: u32, l: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), l));
        self.push(JMP32 | JNE | K, dst, 0, 0, imm as i32)
    }

    /// `goto l`.
    pub fn ja(&mut self, l: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), l));
        self.push(JMP | JA, 0, 0, 0, 0)
    }

    /// Calls kernel helper number `helper` (enum bpf_func_id); r0 = result.
    pub fn call(&mut self, helper: i32) -> &mut Asm {
        self.push(JMP | CALL, 0, 0, 0, helper)
    }

    /// Returns r0.
    pub fn exit(&mut self) -> &mut Asm {
        self.push(JMP | EXIT, 0, 0, 0, 0)
    }

    /// The instructions with every jump offset filled in (relative to the
    /// instruction after the jump).
    pub fn finish(mut self) -> Vec<Insn> {
        for (at, l) in std::mem::take(&mut self.fixups) {
            let target = self.labels[l.0].expect("jump to a label never placed");
            let off = target as i64 - at as i64 - 1;
            self.insns[at].off = i16::try_from(off).expect("jump too far");
        }
        self.insns
    }
}

/// The program as the bytes `BPF_PROG_LOAD` takes.
pub fn encode_all(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(Insn::encode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected bytes worked out from the kernel's macros in
    // include/linux/filter.h (BPF_MOV64_REG, BPF_LDX_MEM, BPF_STX_MEM,
    // BPF_ST_MEM, BPF_EMIT_CALL, BPF_EXIT_INSN) and the opcode table of
    // Documentation/bpf/standardization/instruction-set.rst.
    #[test]
    fn encodes_like_the_kernel_macros() {
        let mut a = Asm::new();
        a.mov64_reg(R6, R1) // bf 16 00 00 00000000
            .ldx_w(R2, R6, 4) // 61 62 0400 00000000
            .mov32_imm(R3, 0x0200_007f) // b4 03 0000 7f000002
            .stx_w(R6, 4, R3) // 63 36 0400 00000000
            .mov64_imm(R0, 1) // b7 00 0000 01000000
            .st_h(R10, -16, 2) // 6a 0a f0ff 02000000
            .call(64) // 85 00 0000 40000000
            .exit(); // 95 00 0000 00000000
        let got: Vec<[u8; 8]> = a.finish().iter().map(Insn::encode).collect();
        assert_eq!(
            got,
            vec![
                [0xbf, 0x16, 0, 0, 0, 0, 0, 0],
                [0x61, 0x62, 4, 0, 0, 0, 0, 0],
                [0xb4, 0x03, 0, 0, 0x7f, 0, 0, 2],
                [0x63, 0x36, 4, 0, 0, 0, 0, 0],
                [0xb7, 0x00, 0, 0, 1, 0, 0, 0],
                [0x6a, 0x0a, 0xf0, 0xff, 2, 0, 0, 0],
                [0x85, 0, 0, 0, 64, 0, 0, 0],
                [0x95, 0, 0, 0, 0, 0, 0, 0],
            ]
        );
    }

    #[test]
    fn jumps_resolve_forward_and_backward_relative_to_the_next_insn() {
        let mut a = Asm::new();
        let back = a.label();
        let fwd = a.label();
        a.here(back);
        a.jne32_imm(R2, 0xc800_000a, fwd); // 0: +2 -> 3
        a.mov64_imm(R0, 0); // 1
        a.ja(back); // 2: -3 -> 0
        a.here(fwd);
        a.exit(); // 3
        let p = a.finish();
        assert_eq!(p[0].code, 0x56, "JMP32|JNE|K");
        assert_eq!(p[0].off, 2);
        assert_eq!(p[0].imm as u32, 0xc800_000a, "imm kept bit for bit");
        assert_eq!(p[2].code, 0x05);
        assert_eq!(p[2].off, -3);
        assert_eq!(encode_all(&p).len(), 32);
    }

    #[test]
    fn a_map_load_takes_two_slots_and_names_the_fd() {
        let mut a = Asm::new();
        let l = a.label();
        assert!(!a.used(l));
        a.ld_map_fd(R1, 7).jeq64_imm(R0, 0, l);
        assert!(a.used(l));
        a.here(l);
        a.exit();
        let p = a.finish();
        assert_eq!(p[0].encode(), [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
        assert_eq!(p[1].encode(), [0; 8]);
        assert_eq!((p[2].code, p[2].off), (0x15, 0));
    }

    #[test]
    #[should_panic(expected = "never placed")]
    fn a_jump_to_an_unplaced_label_is_a_bug() {
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        a.finish();
    }
}
