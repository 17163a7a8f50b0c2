"""What Vivado's `package_xo` needs to turn the Verilog into an XRT kernel object (.xo).

- `kernel_xml`: the kernel description XRT and v++ read (`kernel.xml`, format 1.6): the
  `ap_ctrl_hs` protocol, the AXI4-Lite control port, one AXI4 master port per HBM port with its
  data width, and every argument with its register offset and size, taken from the
  `RegisterMap` the control slave is built from (so the two cannot disagree).
- `package_xo_tcl`: a Vivado batch script that packages the Verilog as an IP with the Vitis
  kernel properties, records the register map (pointer arguments tied to their master by
  ASSOCIATED_BUSIF, then the read-only status registers the core drives) and calls
  `package_xo` with the kernel.xml. Status registers are not kernel.xml arguments (XRT writes
  arguments); the host reads them with `xrt::ip::read_register` / `kernel.read_register`. Run it from the folder holding
  the files: `vivado -mode batch -source package_xo.tcl -tclargs <out.xo>`.

Neither Vivado nor v++ runs here; tests check the XML against the register map and that the
script is complete Tcl naming every file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence

from .control import CONTROL_ADDR_WIDTH, CTRL_OFFSET, GIE_OFFSET, IER_OFFSET, ISR_OFFSET, ArgumentKind, RegisterMap
from .interfaces import AXI_LITE_DATA_WIDTH

CONTROL_BUNDLE = "s_axi_control"
KERNEL_XML_VERSION = ("1", "6")
VENDOR, LIBRARY, VERSION = "llmfab.org", "kernel", "1.0"
# Address qualifiers of kernel.xml: 0 scalar in the control registers, 1 global memory pointer.
_QUALIFIER = {ArgumentKind.SCALAR: "0", ArgumentKind.POINTER: "1"}
_C_TYPE = {ArgumentKind.SCALAR: "uint", ArgumentKind.POINTER: "void*"}
_FIXED_REGISTERS = (("CTRL", CTRL_OFFSET, "Control signals (ap_start, ap_done, ap_idle, ap_ready, auto_restart)"),
                    ("GIER", GIE_OFFSET, "Global interrupt enable"),
                    ("IP_IER", IER_OFFSET, "IP interrupt enable (ap_done, ap_ready)"),
                    ("IP_ISR", ISR_OFFSET, "IP interrupt status (toggle on write)"))


def vlnv(kernel: str) -> str:
    return f"{VENDOR}:{LIBRARY}:{kernel}:{VERSION}"


def _check_masters(register_map: RegisterMap, masters: Mapping[str, int]) -> None:
    used = {a.master for a in register_map.arguments if a.kind is ArgumentKind.POINTER}
    if used - set(masters):
        raise ValueError(f"pointer arguments use masters {sorted(used - set(masters))} that have no port.")


def kernel_xml(kernel: str, register_map: RegisterMap, masters: Mapping[str, int]) -> str:
    """kernel.xml text. masters: AXI4 master bundle name -> data width in bits."""
    _check_masters(register_map, masters)
    root = ElementTree.Element("root", versionMajor=KERNEL_XML_VERSION[0], versionMinor=KERNEL_XML_VERSION[1])
    k = ElementTree.SubElement(root, "kernel", name=kernel, language="ip_c", vlnv=vlnv(kernel), attributes="",
                               preferredWorkGroupSizeMultiple="0", workGroupSize="1", interrupt="true",
                               hwControlProtocol="ap_ctrl_hs")
    ports = ElementTree.SubElement(k, "ports")
    ElementTree.SubElement(ports, "port", name=CONTROL_BUNDLE, mode="slave", range=hex(1 << CONTROL_ADDR_WIDTH),
                           dataWidth=str(AXI_LITE_DATA_WIDTH), portType="addressable", base="0x0")
    for bundle, width in masters.items():
        ElementTree.SubElement(ports, "port", name=bundle, mode="master", range="0xFFFFFFFFFFFFFFFF",
                               dataWidth=str(width), portType="addressable", base="0x0")
    args = ElementTree.SubElement(k, "args")
    for index, arg in enumerate(register_map.arguments):
        ElementTree.SubElement(args, "arg", name=arg.name, addressQualifier=_QUALIFIER[arg.kind], id=str(index),
                               port=arg.master if arg.kind is ArgumentKind.POINTER else CONTROL_BUNDLE,
                               size=hex(arg.size_bytes), offset=hex(arg.offset), type=_C_TYPE[arg.kind],
                               hostOffset="0x0", hostSize=hex(arg.size_bytes))
    ElementTree.indent(root, "  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"


def _tcl_word(text: str) -> str:
    """A Tcl word in braces (no substitution); refuses text that would unbalance them."""
    if any(c in text for c in "{}\\\n"):
        raise ValueError(f"{text!r} cannot be quoted as a Tcl word.")
    return "{" + text + "}"


def package_xo_tcl(kernel: str, verilog_files: Sequence[str], register_map: RegisterMap,
                   masters: Mapping[str, int], kernel_xml_file: str = "kernel.xml") -> str:
    """The Vivado batch script packaging `verilog_files` (names relative to the script) as kernel `kernel`."""
    _check_masters(register_map, masters)
    if not verilog_files:
        raise ValueError("package_xo needs at least one Verilog file.")
    lines = [
        f"# Package the llmfab kernel '{kernel}' as an XRT kernel object (generated by llmfab rtl).",
        "# Usage, from this folder: vivado -mode batch -source package_xo.tcl -tclargs <out.xo>",
        "set here [file normalize [file dirname [info script]]]",
        f"set xo_path [expr {{[llength $argv] > 0 ? [lindex $argv 0] : \"$here/{kernel}.xo\"}}]",
        "set ip_dir \"$here/packaged_kernel\"",
        "set project_dir \"$here/package_project\"",
        "create_project -force kernel_pack $project_dir",
    ]
    for name in verilog_files:
        lines.append(f"add_files -norecurse [file join $here {_tcl_word(name)}]")
    lines += [
        f"set_property top {kernel} [current_fileset]",
        "update_compile_order -fileset sources_1",
        f"ipx::package_project -root_dir $ip_dir -vendor {VENDOR} -library {LIBRARY} -taxonomy /KernelIP "
        "-import_files -set_current false",
        "ipx::unload_core $ip_dir/component.xml",
        "ipx::edit_ip_in_project -upgrade true -name tmp_edit_project -directory $ip_dir $ip_dir/component.xml",
        "set core [ipx::current_core]",
        "set_property core_revision 1 $core",
        "foreach up [ipx::get_user_parameters -of_objects $core] { ipx::remove_user_parameter [get_property NAME $up] $core }",
        f"ipx::associate_bus_interfaces -busif {CONTROL_BUNDLE} -clock ap_clk $core",
    ]
    for bundle in masters:
        lines.append(f"ipx::associate_bus_interfaces -busif {bundle} -clock ap_clk $core")
    lines += [
        f"set mem_map [ipx::add_memory_map -quiet {CONTROL_BUNDLE} $core]",
        "set block [ipx::add_address_block -quiet reg0 $mem_map]",
        f"set_property range {hex(1 << CONTROL_ADDR_WIDTH)} $block",
    ]
    registers = [(name, offset, 32, description, None) for name, offset, description in _FIXED_REGISTERS]
    registers += [(arg.name, arg.offset, arg.width, f"kernel argument {arg.name} ({arg.kind.value})",
                   arg.master if arg.kind is ArgumentKind.POINTER else None) for arg in register_map.arguments]
    registers += [(reg.name, reg.offset, 32, f"status (read only): {reg.description}", None)
                  for reg in register_map.status]
    for name, offset, width, description, bus in registers:
        lines += [
            f"set reg [ipx::add_register {name} $block]",
            f"set_property description {_tcl_word(description)} $reg",
            f"set_property address_offset {hex(offset)} $reg",
            f"set_property size {width} $reg",
        ]
        if bus is not None:
            lines += ["set param [ipx::add_register_parameter ASSOCIATED_BUSIF $reg]",
                      f"set_property value {bus} $param"]
    lines += [
        f"set_property slave_memory_map_ref {CONTROL_BUNDLE} [ipx::get_bus_interfaces {CONTROL_BUNDLE} -of_objects $core]",
        "set_property sdx_kernel true $core",
        "set_property sdx_kernel_type rtl $core",
        "set_property ipi_drc {ignore_freq_hz true} $core",
        "set_property vitis_drc {ctrl_protocol ap_ctrl_hs} $core",
        "ipx::create_xgui_files $core",
        "ipx::update_checksums $core",
        "ipx::check_integrity -kernel $core",
        "ipx::save_core $core",
        "close_project -delete",
        f"package_xo -force -xo_path $xo_path -kernel_name {kernel} -ip_directory $ip_dir "
        f"-kernel_xml [file join $here {_tcl_word(kernel_xml_file)}]",
    ]
    return "\n".join(lines) + "\n"
