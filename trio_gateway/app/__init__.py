"""The program around the runtime: wiring (assemble) and the process lifecycle."""
