// Console routes under /console/ (the hub answers every one of them with index.html). A page id the app
// has no view for still gets the shell, saying so, like the API's menu may offer it.
import { createRouter, createWebHistory } from "vue-router";
import Login from "./views/Login.vue";
import Shell from "./views/Shell.vue";

export const router = createRouter({
  history: createWebHistory("/console/"),
  routes: [
    { path: "/login", name: "login", component: Login },
    { path: "/", name: "home", component: Shell, props: { page: "home" } },
    { path: "/:page([A-Za-z]+)", name: "page", component: Shell, props: true },
    { path: "/:rest(.*)*", redirect: "/" },
  ],
});
