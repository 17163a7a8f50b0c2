"""Host runtime: program loader, backends (emu, rtl, xrt), generation loop."""
