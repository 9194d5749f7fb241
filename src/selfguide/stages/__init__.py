"""Pipeline stages: generate -> annotate -> train -> evaluate. Each reads the previous stage's
files from the run directory and writes its own, resumably."""
