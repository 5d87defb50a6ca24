"""Exchange formats outside the core: adapters in and out of other libraries' file layouts."""
