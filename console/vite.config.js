// The console is served under /console by the `console` function (keel-local serves it the same way), so every
// asset path is relative to that base.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/console/',
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, assetsInlineLimit: 0 },
});
