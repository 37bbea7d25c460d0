"""Stand-in kinds: what a site tunes in place of the full model (an emulator, or a control model)."""
