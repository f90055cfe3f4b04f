import { defineConfig } from "vite";

// Built into dist/, which edgefleet-server embeds at compile time (control-plane/build.rs). During `npm run
// dev`, API calls go to a local server: EDGEFLEET_SERVER=https://127.0.0.1:8443 npm run dev.
export default defineConfig({
  base: "/",
  build: { outDir: "dist", emptyOutDir: true, assetsInlineLimit: 0, sourcemap: false },
  server: {
    proxy: { "/api": { target: process.env.EDGEFLEET_SERVER ?? "https://127.0.0.1:8443", secure: false } },
  },
});
